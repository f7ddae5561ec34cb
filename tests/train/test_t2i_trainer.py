"""Text-to-image DiT training, sampling and evaluation on a tiny tokenizer, offline (tfds mock data), with
the byte-level text encoder trained jointly; and the config errors of `config.text`."""
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import run
from vqdiff.errors import UserError
from vqdiff.train import checkpoint, t2i_eval, t2i_trainer
from vqdiff.train.validation import validate_t2i_config

from support import load_experiment
from test_dit_trainer import NUM_EXAMPLES, tokenizer_workdir  # noqa: F401  (a module fixture)


def t2i_config(tokenizer_workdir, variant="tiny_bytes"):
    config = load_experiment("dit_t2i_fashion_mnist", variant)
    config.data.dataset = "mnist"
    config.tokenizer.workdir = tokenizer_workdir
    # The tiny config's 4 steps: the first has learning rate 0 (warmup), and zero-initialised layers pass
    # gradients on one layer per update (final layer, then adaLN and cross-attention, then the encoder).
    config.train.grid_every = 100
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_workdir):
    workdir = tmp_path_factory.mktemp("t2i")
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        t2i_trainer.train(t2i_config(tokenizer_workdir), str(workdir))
    return workdir


def test_byte_encoder_trains_with_the_dit(trained, tokenizer_workdir):
    config = t2i_config(tokenizer_workdir)
    trainer = t2i_trainer.TextToImageTrainer(config, t2i_trainer.dit_trainer.load_tokenizer(config))
    state = trainer.restore(checkpoint.Checkpointer(str(trained), create=False))
    initial = trainer.initial_state()
    assert int(state.step) == 4 and set(state.params) == {"dit", "text_encoder"}
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params["text_encoder"], initial.params["text_encoder"])
    assert all(jax.tree.leaves(moved))
    assert (trained / "grids" / "samples_0000004.png").exists()


def test_sample_mode_draws_one_image_per_prompt(trained, tokenizer_workdir, capsys):
    config = t2i_config(tokenizer_workdir)
    prompts = ("a photo of a sneaker", "a bag", "a photo of a sneaker")
    config.sample.prompts = prompts
    run.run(config, str(trained), "sample")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with np.load(summary["npz"]) as data:
        images = data["images"]
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    with open(summary["prompts"]) as f:
        assert json.load(f) == list(prompts)


@pytest.mark.slow
def test_eval_prints_prompt_accuracy_over_held_out_templates(trained, tokenizer_workdir, capsys, weights_cache):
    pytest.importorskip("torch")  # converts the Inception weights for FID
    config = t2i_config(tokenizer_workdir)
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        run.run(config, str(trained), "eval")
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"step", "fid", "prompt_accuracy", "num_samples"} <= set(metrics)
    assert metrics["step"] == 4 and metrics["num_samples"] == 16 and metrics["prompt_templates"] == "held_out"
    assert 0 <= metrics["prompt_accuracy"] <= 1 and metrics["fid"] > 0


@pytest.mark.parametrize("key, value, message", [
    ("text.encoder.kind", "clip", r"config.text.encoder=.*kind='clip': use one of"),
    ("text.caption_dropout_prob", 1.0, r"config.text.caption_dropout_prob=1.0 must be in \(0, 1\)"),
    ("text.captions", "alt_text", r"config.text.captions='alt_text': use one of"),
    ("text.class_names", ("cat", "dog"), r"config.text.class_names has 2 names but config.model.num_classes=10"),
    ("eval.prompt_templates", "test", r"config.eval.prompt_templates='test': use one of train, held_out"),
])
def test_bad_text_config_values_are_named(key, value, message):
    config = load_experiment("dit_t2i_fashion_mnist", "tiny")
    parent, leaf = key.rsplit(".", 1)
    node = config
    for part in parent.split("."):
        node = node[part]
    node[leaf] = value
    with pytest.raises(UserError, match=message):
        validate_t2i_config(config)
