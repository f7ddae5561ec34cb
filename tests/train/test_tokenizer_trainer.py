import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.train import checkpoint, sharding
from vqdiff.eval import fid
from vqdiff.eval.image_metrics import crop_padding
from vqdiff.models.lpips import make_lpips_fn
from vqdiff.train.tokenizer_eval import codebook_statistics, evaluate
from vqdiff.train.tokenizer_trainer import Trainer, train

from support import load_experiment

NUM_EXAMPLES = 48


def tiny_config(**train_overrides):
    config = load_experiment("vqvae_fashion_mnist", "tiny")
    config.data.dataset = "mnist"        # served by tfds.testing.mock_data, offline
    config.train.update(train_overrides)
    return config


def synthetic_batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return dict(image=rng.uniform(-1, 1, size=(batch_size, 32, 32, 1)).astype(np.float32),
                label=np.zeros(batch_size, np.int32), mask=np.ones(batch_size, np.float32))


def run_steps(config, devices, num_steps):
    trainer = Trainer(config, devices=devices)
    state = trainer.initial_state()
    update = trainer.compiled_train_step()
    for i in range(num_steps):
        state, _ = update(state, sharding.global_batch(synthetic_batch(config.train.batch_size, i),
                                                       trainer.batch_sharding))
    return jax.device_get(state)


def test_update_on_8_devices_equals_1_device():
    config = tiny_config()
    one = run_steps(config, jax.devices()[:1], 3)
    eight = run_steps(config, jax.devices()[:8], 3)
    assert int(one.step) == int(eight.step) == 3
    for tree in ("params", "model_state", "opt_state"):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                               getattr(one, tree), getattr(eight, tree))


def restored(config, workdir):
    trainer = Trainer(config)
    return jax.device_get(trainer.restore(checkpoint.Checkpointer(workdir, create=False)))


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """An uninterrupted 4-step run, and a run stopped after 2 steps and resumed to 4."""
    root = tmp_path_factory.mktemp("runs")
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        train(tiny_config(num_steps=4), str(root / "full"))
        train(tiny_config(num_steps=2), str(root / "resumed"))
        train(tiny_config(num_steps=4), str(root / "resumed"))
    return root


def test_resume_continues_step_count_optimizer_state_and_losses(trained_runs):
    full = restored(tiny_config(), str(trained_runs / "full"))
    resumed = restored(tiny_config(), str(trained_runs / "resumed"))
    assert int(full.step) == int(resumed.step) == 4
    counts = [int(x) for x in jax.tree_util.tree_leaves(resumed.opt_state) if np.ndim(x) == 0]
    assert counts and all(c == 4 for c in counts)    # Adam's step count and the schedule's
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                           full.as_dict(), resumed.as_dict())


def test_training_writes_config_grids_and_events(trained_runs):
    workdir = trained_runs / "full"
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["num_steps"] == 4 and saved["quantizer"]["num_codes"] == 16
    assert sorted(os.listdir(workdir / "grids")) == ["reconstructions_0000002.png",
                                                      "reconstructions_0000004.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))


def test_eval_metrics_match_numpy_over_the_split(trained_runs, weights_cache):
    pytest.importorskip("torch")  # converts the Inception weights for rFID
    config = tiny_config()
    config.eval.rfid_num_images = 16
    workdir = str(trained_runs / "full")
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        metrics = evaluate(config, workdir)
        from vqdiff.data import pipeline
        images = np.concatenate([b["image"][b["mask"] > 0] for b in pipeline.create_dataset(
            config.data, split="test", train=False, global_batch_size=16, seed=0)])
    trainer = Trainer(config)
    state = trainer.restore(checkpoint.Checkpointer(workdir, create=False))
    recon, indices = trainer.reconstruct_fn(config.eval.use_ema_params)(state, images)
    x = np.clip((crop_padding(images, 28, 32) + 1) / 2, 0, 1)
    y = np.clip((crop_padding(np.asarray(recon), 28, 32) + 1) / 2, 0, 1)
    psnr = np.mean(10 * np.log10(1 / np.mean((x - y) ** 2, axis=(1, 2, 3))))
    counts = np.bincount(np.asarray(indices).ravel(), minlength=16)
    lpips = np.mean(make_lpips_fn(config.eval.lpips_backbone)(np.asarray(recon), images))
    uint8 = lambda z: np.round(z * 255).astype(np.uint8)
    rfid = fid.fid_and_pr(uint8(x[:16]), uint8(y[:16]))["fid"]
    assert metrics["step"] == 4 and metrics["num_images"] == NUM_EXAMPLES
    assert metrics["psnr"] == pytest.approx(psnr, rel=1e-4)
    assert metrics["lpips"] == pytest.approx(lpips, rel=1e-4)
    assert metrics["rfid"] == pytest.approx(rfid, rel=1e-3) and metrics["rfid_num_images"] == 16
    assert metrics["codebook_usage"] == pytest.approx(np.mean(counts > 0))
    assert 0 < metrics["ssim"] <= 1
    with open(os.path.join(workdir, "eval", "metrics_0000004.json")) as f:
        assert json.load(f) == metrics
    assert os.path.exists(os.path.join(workdir, "eval", "reconstructions_0000004.png"))


def test_codebook_statistics_closed_form():
    stats = codebook_statistics(np.array([2, 2, 0, 4]))
    assert stats["codebook_usage"] == 0.75
    p = np.array([0.25, 0.25, 0.5])
    assert stats["perplexity"] == pytest.approx(np.exp(-np.sum(p * np.log(p))))


def test_eval_without_checkpoint_names_the_folder(tmp_path):
    from vqdiff.errors import UserError
    with pytest.raises(UserError, match=f"no checkpoint in {tmp_path}/checkpoints"):
        evaluate(tiny_config(), str(tmp_path))
