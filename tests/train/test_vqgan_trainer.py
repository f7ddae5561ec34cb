"""VQGAN trainer: λ against an independent gradient-norm ratio, the start step, independence of the two
half-updates, resume exactness, and eval on a VQGAN workdir."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from vqdiff.losses import gan
from vqdiff.models.lpips import make_lpips_fn
from vqdiff.train import checkpoint, sharding
from vqdiff.train.state import step_rng
from vqdiff.train.tokenizer_eval import evaluate
from vqdiff.train.vqgan_trainer import VQGANTrainer, train

from support import load_experiment

NUM_EXAMPLES = 48


def tiny_config(**train_overrides):
    config = load_experiment("vqgan_fashion_mnist", "tiny")   # gan.start_step = 1
    config.data.dataset = "mnist"        # served by tfds.testing.mock_data, offline
    config.train.update(train_overrides)
    return config


def synthetic_batch(batch_size, seed):
    rng = np.random.default_rng(seed)
    return dict(image=rng.uniform(-1, 1, size=(batch_size, 32, 32, 1)).astype(np.float32),
                label=np.zeros(batch_size, np.int32), mask=np.ones(batch_size, np.float32))


@pytest.fixture(scope="module")
def steps(weights_cache):
    """(trainer, [state before step 0, after 0 (before the start), after 1 (after the start)] on the host,
    [metrics of steps 0 and 1], [batches])."""
    config = tiny_config()
    trainer = VQGANTrainer(config, devices=jax.devices()[:1])
    update = trainer.compiled_train_step()
    state = trainer.initial_state()
    states, metrics, batches = [jax.device_get(state)], [], []
    for i in range(2):
        batches.append(synthetic_batch(config.train.batch_size, i))
        state, m = update(state, sharding.global_batch(batches[-1], trainer.batch_sharding))
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return trainer, states, metrics, batches


def reconstruct(trainer, state, images):
    """The step's forward pass with `state`'s params: (reconstructions, quantizer aux)."""
    rng_quantizer, rng_dropout = jax.random.split(step_rng(trainer.config.seed, state.step))
    return trainer.model.apply({"params": state.params, **state.model_state}, images, train=True,
                               mutable=list(state.model_state.keys()),
                               rngs={"quantizer": rng_quantizer, "dropout": rng_dropout})[0]


def generator_losses(trainer, state, params, images):
    """(reconstruction + perceptual + quantizer loss, hinge g_loss against the state's discriminator)."""
    g = trainer.config.gan
    recon, aux = reconstruct(trainer, state.replace(params=params), images)
    rec = jnp.mean((recon - images) ** 2) + g.perceptual_weight * jnp.mean(make_lpips_fn(g.lpips_backbone)(recon, images))
    logits = trainer.discriminator.apply({"params": state.disc_params}, recon)
    return rec + aux["loss"], -jnp.mean(logits)


def with_kernel(params, kernel):
    decoder = {**params["decoder"], "conv_out": {**params["decoder"]["conv_out"], "kernel": kernel}}
    return {**params, "decoder": decoder}


def allclose_trees(a, b, rtol=1e-5, atol=1e-6):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_before_start_discriminator_is_frozen_and_generator_has_no_adversarial_term(steps):
    trainer, states, metrics, batches = steps
    before, after = states[0], states[1]
    assert metrics[0]["discriminator_factor"] == 0
    for name in ("disc_params", "disc_opt_state", "logit_ema"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, getattr(after, name), getattr(before, name))
    images = jnp.asarray(batches[0]["image"])
    grads = jax.jit(jax.grad(lambda p: generator_losses(trainer, before, p, images)[0]))(before.params)
    updates, _ = trainer.tx.update(grads, before.opt_state, before.params)
    allclose_trees(after.params, optax.apply_updates(before.params, updates))


def test_step_without_discriminator_equals_the_full_step_before_the_start(steps):
    trainer, states, metrics, batches = steps
    update = trainer.compiled_train_step(with_discriminator=False)
    state, m = update(jax.device_put(states[0], trainer.state_shardings),
                      sharding.global_batch(batches[0], trainer.batch_sharding))
    allclose_trees(jax.device_get(state).as_dict(), states[1].as_dict())
    for name in ("loss", "reconstruction_loss", "perceptual_loss", "codebook_loss", "psnr"):
        assert m[name] == pytest.approx(metrics[0][name], rel=1e-5)
    assert m["logits_real"] == m["logits_fake"] == m["generator_adversarial_loss"] == 0
    assert set(m) == set(metrics[0])


def test_adaptive_weight_is_the_ratio_of_last_kernel_gradient_norms(steps):
    trainer, states, metrics, batches = steps
    state, images = states[1], jnp.asarray(batches[1]["image"])
    kernel = state.params["decoder"]["conv_out"]["kernel"]
    both = jax.jit(jax.jacrev(lambda k: generator_losses(trainer, state, with_kernel(state.params, k), images)))
    norms = [np.linalg.norm(g) for g in both(kernel)]
    assert metrics[1]["discriminator_factor"] == 1
    assert metrics[1]["adaptive_weight"] == pytest.approx(norms[0] / (norms[1] + 1e-4), rel=1e-4)


def test_after_start_each_half_update_depends_on_the_old_state_only(steps):
    trainer, states, metrics, batches = steps
    before, after = states[1], states[2]
    images = jnp.asarray(batches[1]["image"])
    weight = trainer.config.gan.adversarial_weight * metrics[1]["adaptive_weight"]

    def generator_loss(p):
        rec, g_loss = generator_losses(trainer, before, p, images)
        return rec + weight * g_loss

    updates, _ = trainer.tx.update(jax.jit(jax.grad(generator_loss))(before.params), before.opt_state, before.params)
    allclose_trees(after.params, optax.apply_updates(before.params, updates))

    fake = reconstruct(trainer, before, images)[0]
    disc = lambda p, x: trainer.discriminator.apply({"params": p}, x)
    d_grads = jax.jit(jax.grad(lambda p: gan.hinge_d_loss(disc(p, images), disc(p, fake))))(before.disc_params)
    d_updates, _ = trainer.disc_tx.update(d_grads, before.disc_opt_state, before.disc_params)
    allclose_trees(after.disc_params, optax.apply_updates(before.disc_params, d_updates))
    assert not np.allclose(after.disc_params["conv_0"]["kernel"], before.disc_params["conv_0"]["kernel"])


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, weights_cache):
    """(workdir, state of an uninterrupted 4-step run, state after losing step 4's checkpoint and resuming
    from step 2's). One config for both runs, so the second compiles nothing new."""
    workdir = str(tmp_path_factory.mktemp("vqgan_runs") / "run")
    config = tiny_config(num_steps=4, checkpoint_every=2, keep_checkpoints=3)
    trainer = VQGANTrainer(config)
    restore = lambda: jax.device_get(trainer.restore(checkpoint.Checkpointer(workdir, create=False)))
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        train(config, workdir)
        full = restore()
        shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))  # as if the run had died after step 2's save
        train(config, workdir)
    return workdir, full, restore()


def test_resume_equals_uninterrupted_run(trained_runs):
    workdir, full, resumed = trained_runs
    assert int(full.step) == int(resumed.step) == 4
    # The loop ran step 1 without the discriminator (start_step 1), then the full step.
    logged = {r["step"]: r for r in map(json.loads, open(os.path.join(workdir, "train_metrics.jsonl")))}
    assert logged[1]["logits_real"] == 0 and all(logged[s]["logits_real"] != 0 for s in (2, 3, 4))
    allclose_trees(full.as_dict(), resumed.as_dict(), rtol=1e-6, atol=1e-7)


def test_eval_on_a_vqgan_workdir(trained_runs):
    config = tiny_config()
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        metrics = evaluate(config, trained_runs[0])
    assert metrics["step"] == 4 and metrics["num_images"] == NUM_EXAMPLES
    assert {"psnr", "ssim", "lpips", "codebook_usage", "perplexity"} <= set(metrics)
