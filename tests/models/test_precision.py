"""bfloat16 compute (model.dtype) of the DiT and the VQ autoencoder: float32 params, float32 outputs and
losses, results within bf16 rounding of float32 compute, float32 training state after an update."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqdiff.diffusion.schedules import make_schedule
from vqdiff.models.autoencoder import VQAutoencoder
from vqdiff.train import dit_trainer

from support import load_experiment, random_dit_state

FLOAT32 = jnp.dtype(jnp.float32)


def _relative_error(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _autoencoder(dtype):
    config = load_experiment("vqvae_fashion_mnist", "tiny")
    config.model.update(attention_at_lowest=True, dtype=dtype)      # tiny: 32×32 → 8×8 via space-to-depth
    return VQAutoencoder(model_config=config.model.to_dict(), quantizer_config=config.quantizer.to_dict(),
                         image_channels=1)


def test_autoencoder_bfloat16_keeps_float32_params_and_outputs():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    latents = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
    fp32, bf16 = _autoencoder("float32"), _autoencoder("bfloat16")
    variables = fp32.init(jax.random.key(0), images)
    bf16_shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), images))
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_shapes)} == {FLOAT32}

    def encode_decode(model):
        return jax.jit(lambda v: (model.apply(v, images, method=VQAutoencoder.encode),
                                  model.apply(v, latents, method=VQAutoencoder.decode)))(variables)
    (latent, image), (latent_bf16, image_bf16) = encode_decode(fp32), encode_decode(bf16)
    assert latent_bf16.dtype == FLOAT32 and image_bf16.dtype == FLOAT32
    assert 0 < _relative_error(latent_bf16, latent) < 5e-2       # bf16 was used, within its rounding
    assert 0 < _relative_error(image_bf16, image) < 5e-2


def test_dit_bfloat16_training_step_keeps_float32_loss_and_state():
    """One bf16 update (its outputs' closeness to float32 is checked in tests/models/test_dit.py)."""
    config = load_experiment("dit_fashion_mnist", "tiny")
    config.model.dtype = "bfloat16"
    latent_shape = (8, 8, 4)
    rng = np.random.default_rng(1)
    batch = dict(latent=rng.standard_normal((8, *latent_shape)).astype(np.float32),
                 label=rng.integers(0, 10, 8).astype(np.int32), mask=np.ones(8, np.float32))
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    tx = optax.adam(1e-3)
    model = dit_trainer.build_dit(config, latent_shape)
    assert model.dtype == jnp.bfloat16
    state = random_dit_state(config, model, tx, latent_shape)
    new_state, metrics = jax.jit(lambda s, b: dit_trainer.train_step(
        s, b, None, model=model, tx=tx, schedule=schedule, config=config, tokenizer_model=None))(state, batch)
    assert metrics["loss"].dtype == FLOAT32 and np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert {leaf.dtype for leaf in jax.tree.leaves((new_state.params, new_state.opt_state, new_state.ema_params))
            if jnp.issubdtype(leaf.dtype, jnp.floating)} == {FLOAT32}
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    moved = [np.abs(np.asarray(a - b)).max() for a, b in zip(jax.tree.leaves(new_state.params),
                                                             jax.tree.leaves(state.params))]
    assert min(moved) > 0
