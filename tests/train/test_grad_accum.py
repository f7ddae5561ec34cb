"""Gradient accumulation (vqdiff/train/accumulation.py and its use in the DiT and tokenizer trainers):
k micro-batches must give the one big-batch update."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vqdiff.diffusion.schedules import make_schedule
from vqdiff.train import dit_trainer, tokenizer_trainer
from vqdiff.train.accumulation import accumulated_value_and_grad, split_micro_batches

from support import load_experiment, random_dit_state


def test_split_micro_batches_is_strided_and_complete():
    batch = {"x": np.arange(12).reshape(6, 2)}
    micro = np.asarray(split_micro_batches(batch, 3)["x"])
    assert micro.shape == (3, 2, 2)
    np.testing.assert_array_equal(micro[1], [[2, 3], [8, 9]])
    np.testing.assert_array_equal(np.sort(micro.reshape(-1)), np.arange(12))
    with pytest.raises(ValueError, match="not divisible"):
        split_micro_batches(batch, 4)


def _weighted_regression(params, batch, carry, index):
    """Mask-weighted mean squared error of a linear model, with a running count as carry."""
    error = jnp.sum(jnp.square(batch["x"] @ params["w"] + params["b"] - batch["y"]), axis=-1)
    mask = batch["mask"]
    loss = jnp.sum(mask * error) / jnp.maximum(jnp.sum(mask), 1e-30)
    return loss, (dict(abs_error=jnp.sum(mask * jnp.sqrt(error)) / jnp.maximum(jnp.sum(mask), 1e-30)),
                  carry + index + 1)


@pytest.mark.parametrize("k", [2, 4])
def test_generic_accumulation_equals_big_batch_with_uneven_masks(k):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    mask = np.ones(8, np.float32)
    mask[[0, 4, 5]] = 0.0          # micro-batches hold different numbers of real examples
    batch = dict(x=rng.standard_normal((8, 5)).astype(np.float32), y=rng.standard_normal((8, 3)).astype(np.float32),
                 mask=mask)
    (loss, metrics, _), grads = jax.jit(
        lambda p, b: accumulated_value_and_grad(_weighted_regression, p, b, 1, jnp.zeros((), jnp.int32)))(params, batch)
    (loss_k, metrics_k, count), grads_k = jax.jit(
        lambda p, b: accumulated_value_and_grad(_weighted_regression, p, b, k, jnp.zeros((), jnp.int32)))(params, batch)
    assert int(count) == k * (k + 1) // 2          # the carry went through every micro-batch in order
    np.testing.assert_allclose(float(loss_k), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics_k["abs_error"]), float(metrics["abs_error"]), rtol=1e-6)
    for g_k, g in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(g_k), np.asarray(g), rtol=1e-5, atol=1e-7)


def _assert_same_update(state, micro_state, big_state):
    """The two steps moved every parameter by the same, non-zero amount (with SGD(1): the gradient)."""
    for p, p_micro, p_big in zip(*(jax.tree.leaves(s.params) for s in (state, micro_state, big_state))):
        update_micro, update_big = np.asarray(p_micro - p), np.asarray(p_big - p)
        scale = max(np.abs(update_big).max(), np.abs(np.asarray(p)).max())    # p_new − p rounds at p's scale
        np.testing.assert_allclose(update_micro, update_big, rtol=1e-4, atol=1e-6 * scale)
    assert all(np.abs(np.asarray(b - p)).max() > 0
               for p, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(big_state.params)))


def test_dit_step_with_micro_batches_equals_big_batch_step():
    config = load_experiment("dit_fashion_mnist", "tiny")
    config.model.class_dropout_prob = 0.0      # label dropout is the one draw made per micro-batch
    latent_shape = (8, 8, 4)
    model = dit_trainer.build_dit(config, latent_shape)
    tx = optax.sgd(1.0)     # the update is the gradient (and compiles faster than AdamW)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    rng = np.random.default_rng(1)
    batch = dict(latent=rng.standard_normal((8, *latent_shape)).astype(np.float32),
                 label=rng.integers(0, 10, 8).astype(np.int32), mask=np.array([1, 1, 0, 1, 1, 1, 1, 0], np.float32))
    state = random_dit_state(config, model, tx, latent_shape)

    def step(k):
        config.train.grad_accum_steps = k
        return jax.jit(lambda s, b: dit_trainer.train_step(s, b, None, model=model, tx=tx, schedule=schedule,
                                                           config=config, tokenizer_model=None))(state, batch)

    big_state, big_metrics = step(1)
    micro_state, micro_metrics = step(4)
    for key in ("loss", "mse", "grad_norm"):
        np.testing.assert_allclose(float(micro_metrics[key]), float(big_metrics[key]), rtol=1e-5)
    _assert_same_update(state, micro_state, big_state)


@pytest.mark.slow
def test_tokenizer_step_with_micro_batches_equals_big_batch_step():
    config = load_experiment("vqvae_fashion_mnist", "tiny")
    config.quantizer.update(use_ema=False, dead_code_threshold=0.0)   # a learned codebook: no EMA state
    model = tokenizer_trainer.build_tokenizer(config)
    tx = optax.sgd(1.0)     # the update is the gradient (and compiles faster than AdamW)
    state = jax.jit(lambda: tokenizer_trainer.init_state(config, model, tx))()
    rng = np.random.default_rng(2)
    batch = dict(image=rng.uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32),
                 mask=np.array([1, 0, 1, 1, 1, 1, 0, 1], np.float32))

    def step(k):
        config.train.grad_accum_steps = k
        return jax.jit(lambda s, b: tokenizer_trainer.train_step(s, b, model=model, tx=tx, config=config))(
            state, batch)

    big_state, big_metrics = step(1)
    micro_state, micro_metrics = step(2)
    for key in ("loss", "reconstruction_loss", "psnr", "grad_norm"):
        np.testing.assert_allclose(float(micro_metrics[key]), float(big_metrics[key]), rtol=1e-5)
    _assert_same_update(state, micro_state, big_state)
