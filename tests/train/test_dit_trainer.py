"""Latent DiT training, sampling and evaluation on a tiny tokenizer, offline (tfds mock data)."""
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.errors import UserError
from vqdiff.train import checkpoint, dit_eval, dit_trainer, frozen_tokenizer, latent_cache, tokenizer_trainer
from vqdiff.train.classifier_trainer import load_or_train_classifier, predict_labels
from vqdiff.train.dit_sampling import ImageGenerator
from vqdiff.train.frozen_tokenizer import FrozenTokenizer

from support import load_experiment

NUM_EXAMPLES = 24


@pytest.fixture(scope="module")
def tokenizer_workdir(tmp_path_factory):
    config = load_experiment("vqvae_fashion_mnist", "tiny")
    config.data.dataset = "mnist"        # served by tfds.testing.mock_data, offline
    config.train.num_steps = 2
    workdir = str(tmp_path_factory.mktemp("tokenizer"))
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        tokenizer_trainer.train(config, workdir)
    return workdir


def dit_config(tokenizer_workdir, **train_overrides):
    config = load_experiment("dit_fashion_mnist", "tiny")
    config.data.dataset = "mnist"
    config.tokenizer.workdir = tokenizer_workdir
    config.tokenizer.cache_flips = True
    config.train.update(train_overrides)
    return config


@pytest.fixture(scope="module")
def trained_dits(tmp_path_factory, tokenizer_workdir):
    """Workdirs 'full' (4 steps at once) and 'resumed' (2 steps, then resumed to 4)."""
    root = tmp_path_factory.mktemp("dit")
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        dit_trainer.train(dit_config(tokenizer_workdir), str(root / "full"))
        dit_trainer.train(dit_config(tokenizer_workdir, num_steps=2), str(root / "resumed"))
        dit_trainer.train(dit_config(tokenizer_workdir), str(root / "resumed"))
    return root


def restored(config, workdir, devices=None):
    trainer = dit_trainer.DiTTrainer(config, dit_trainer.load_tokenizer(config), devices=devices)
    return trainer, trainer.restore(checkpoint.Checkpointer(str(workdir), create=False))


def test_resume_equals_uninterrupted_training(trained_dits, tokenizer_workdir):
    config = dit_config(tokenizer_workdir)
    _, full = restored(config, trained_dits / "full")
    _, resumed = restored(config, trained_dits / "resumed")
    assert int(full.step) == int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(jax.device_get(full.as_dict())), jax.tree.leaves(jax.device_get(resumed.as_dict()))):
        np.testing.assert_array_equal(a, b)


def test_latent_cache_holds_the_encoder_outputs_and_stats_normalise_them(trained_dits, tokenizer_workdir):
    config = dit_config(tokenizer_workdir)
    tokenizer = FrozenTokenizer(tokenizer_workdir)
    cache = latent_cache.load_or_build(config, tokenizer, str(trained_dits / "full"))
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        from vqdiff.data import pipeline
        batch = next(iter(pipeline.create_dataset(config.data, split="train", train=False,
                                                  global_batch_size=NUM_EXAMPLES, seed=0)))
    direct = np.asarray(tokenizer.encode(batch["image"]))
    flipped = np.asarray(tokenizer.encode(batch["image"][:, :, ::-1]))
    assert cache["latents"].shape == (2 * NUM_EXAMPLES, 8, 8, 4)
    np.testing.assert_allclose(cache["latents"][:NUM_EXAMPLES], direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cache["latents"][NUM_EXAMPLES:], flipped, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache["labels"], np.tile(batch["label"], 2))

    _, state = restored(config, trained_dits / "full")
    stats = jax.device_get(state.model_state["latent_stats"])
    normalised = dit_trainer.normalize_latents(cache["latents"], stats)
    np.testing.assert_allclose(normalised.reshape(-1, 4).mean(axis=0), 0.0, atol=1e-4)
    assert np.std(normalised) == pytest.approx(1.0, rel=1e-4)


def test_random_batches_depend_only_on_seed_and_step():
    cache = dict(latents=np.arange(50, dtype=np.float32)[:, None], labels=np.arange(50, dtype=np.int32))
    straight = latent_cache.random_batches(cache, 8, seed=3)
    for _ in range(5):
        expected = next(straight)
    resumed = next(latent_cache.random_batches(cache, 8, seed=3, start_step=4))
    np.testing.assert_array_equal(resumed["label"], expected["label"])
    np.testing.assert_array_equal(resumed["latent"][:, 0], expected["label"])


def test_samples_on_8_devices_equal_samples_on_1(trained_dits, tokenizer_workdir):
    config = dit_config(tokenizer_workdir)
    labels = np.arange(8) % 10
    trainer1, state1 = restored(config, trained_dits / "full", jax.devices()[:1])
    trainer8, state8 = restored(config, trained_dits / "full", jax.devices()[:8])
    one = ImageGenerator(trainer1, config.sample)
    images1, images8 = one(state1, labels, seed=5), ImageGenerator(trainer8, config.sample)(state8, labels, seed=5)
    assert images1.shape == (8, 28, 28, 1) and images1.dtype == np.uint8
    assert np.max(np.abs(images1.astype(int) - images8.astype(int))) <= 1
    assert not np.array_equal(images1, one(state1, labels, seed=6))


def test_eval_writes_metrics_whose_cond_accuracy_matches_the_classifier(trained_dits, tokenizer_workdir,
                                                                          weights_cache):
    pytest.importorskip("torch")  # converts the Inception weights for FID
    config = dit_config(tokenizer_workdir)
    workdir = trained_dits / "full"
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        metrics = dit_eval.evaluate(config, str(workdir))
        classifier, params, _ = load_or_train_classifier(config)
    trainer, state = restored(config, workdir)
    labels = np.arange(config.eval.num_samples) % 10
    images = ImageGenerator(trainer, config.sample)(state, labels, seed=config.eval.seed)
    assert metrics["cond_accuracy"] == pytest.approx(np.mean(predict_labels(classifier, params, images) == labels))
    assert metrics["num_samples"] == 16 and metrics["step"] == 4 and metrics["fid"] > 0
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    with open(workdir / "eval" / "metrics_0000004.json") as f:
        assert json.load(f) == metrics
    assert os.path.exists(workdir / "eval" / "classes_0000004.png")


def test_sample_mode_writes_the_requested_labels(trained_dits, tokenizer_workdir):
    config = dit_config(tokenizer_workdir)
    config.sample.labels = (3, 3, 7)
    summary = dit_eval.sample(config, str(trained_dits / "full"))
    with np.load(summary["npz"]) as data:
        assert data["images"].shape == (3, 28, 28, 1)
        np.testing.assert_array_equal(data["labels"], [3, 3, 7])
    config.sample.labels = (3, 12)
    with pytest.raises(UserError, match=r"config.sample.labels has \[12\]"):
        dit_eval.sample(config, str(trained_dits / "full"))


def test_data_that_differs_from_the_tokenizer_is_refused(tokenizer_workdir):
    config = dit_config(tokenizer_workdir)
    config.data.pad_to = 0
    with pytest.raises(UserError, match="config.data.pad_to=0 but the tokenizer"):
        dit_trainer.DiTTrainer(config, dit_trainer.load_tokenizer(config))


def test_snap_to_codebook_decodes_the_nearest_codes_and_off_decodes_the_latent(tokenizer_workdir):
    tokenizer = FrozenTokenizer(tokenizer_workdir)
    model, variables = tokenizer.model, tokenizer.variables
    codebook = next(np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(variables)
                    if jax.tree_util.keystr(path).endswith("['codebook']"))
    latents = jax.random.normal(jax.random.key(0), (2, *tokenizer.latent_shape))
    flat = np.asarray(latents).reshape(-1, codebook.shape[1])
    nearest = codebook[np.argmin(((flat[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)].reshape(latents.shape)
    decode = lambda z: np.asarray(model.apply(variables, jax.numpy.asarray(z), method=model.decode))
    snapped = np.asarray(frozen_tokenizer.decode_latents(model, variables, latents))
    np.testing.assert_allclose(snapped, decode(nearest), atol=1e-5)
    unsnapped = np.asarray(frozen_tokenizer.decode_latents(model, variables, latents, snap_to_codebook=False))
    np.testing.assert_allclose(unsnapped, decode(latents), atol=1e-5)
    assert np.abs(unsnapped - snapped).max() > 1e-3


@pytest.mark.parametrize("per_channel", [False, True])
def test_latent_statistics_give_zero_mean_and_unit_variance(per_channel):
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((500, 2, 2, 3)) * np.array([0.3, 1.0, 2.5]) + np.array([1.0, -2.0, 0.5])
    stats = latent_cache.latent_statistics(latents, per_channel=per_channel)
    assert stats["scale"].shape == ((3,) if per_channel else ())
    normalised = np.asarray(dit_trainer.normalize_latents(latents, stats)).reshape(-1, 3)
    np.testing.assert_allclose(normalised.mean(axis=0), 0.0, atol=1e-5)
    if per_channel:
        np.testing.assert_allclose(normalised.std(axis=0), 1.0, rtol=1e-5)
    else:
        assert normalised.std() == pytest.approx(1.0, rel=1e-5)
        assert normalised.std(axis=0)[2] / normalised.std(axis=0)[0] == pytest.approx(2.5 / 0.3, rel=0.1)
    np.testing.assert_allclose(np.asarray(dit_trainer.denormalize_latents(
        dit_trainer.normalize_latents(latents, stats), stats)), latents, rtol=1e-4, atol=1e-4)


def test_unknown_latent_scale_is_refused_by_name(tokenizer_workdir):
    from vqdiff.train.validation import validate_dit_config
    config = dit_config(tokenizer_workdir)
    config.tokenizer.latent_scale = "per_pixel"
    with pytest.raises(UserError, match=r"config.tokenizer.latent_scale='per_pixel': use 'global' or 'per_channel'"):
        validate_dit_config(config)


@pytest.mark.parametrize("key, value, message", [
    ("sample.guidance_interval", (500, 100), r"config.sample.guidance_interval=\(500, 100\): give \(t_low, t_high\)"),
    ("train_grid.guidance_interval", (0, 1000), r"config.train_grid.guidance_interval=\(0, 1000\): give"),
    ("diffusion.min_snr_gamma", 0.0, r"config.diffusion.min_snr_gamma=0.0: use a positive γ"),
])
def test_bad_guidance_interval_and_min_snr_gamma_are_refused_by_name(tokenizer_workdir, key, value, message):
    from vqdiff.train.validation import validate_dit_config
    config = dit_config(tokenizer_workdir)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(UserError, match=message):
        validate_dit_config(config)
