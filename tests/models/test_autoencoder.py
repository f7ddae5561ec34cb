import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from vqdiff.models import im2col
from vqdiff.models.autoencoder import (AttentionBlock, ResnetBlock, VQAutoencoder, depth_to_space,
                                       downsampling_factor, space_to_depth)


def test_space_depth_rearrangements_match_tensorflow_and_invert():
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    packed = space_to_depth(x, 2)
    np.testing.assert_array_equal(np.asarray(packed), tf.nn.space_to_depth(x, 2).numpy())
    np.testing.assert_array_equal(np.asarray(depth_to_space(packed, 2)), x)
    np.testing.assert_array_equal(np.asarray(depth_to_space(packed, 2)), tf.nn.depth_to_space(packed, 2).numpy())


def test_attention_block_matches_numpy_softmax_attention():
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 8)).astype(np.float32)
    block = AttentionBlock(norm_groups=2)
    params = block.init(jax.random.key(0), x)["params"]
    out = np.asarray(block.apply({"params": params}, x))

    def dense(name, v):
        return v @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
    g = x.reshape(2, 9, 2, 4)   # GroupNorm over (positions, channels in group)
    mean, var = g.mean(axis=(1, 3), keepdims=True), g.var(axis=(1, 3), keepdims=True)
    y = ((g - mean) / np.sqrt(var + 1e-6)).reshape(2, 9, 8)
    y = y * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    q, k, v = dense("q", y), dense("k", y), dense("v", y)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(8)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = x + dense("proj_out", weights @ v).reshape(2, 3, 3, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_resnet_block_gradients_equal_with_xla_convolutions(monkeypatch):
    """At 32+ channels 'auto' takes im2col for the 1×1 shortcut on CPU, and tap_grad is asked for by name for
    the 3×3 convs (auto's choice outside compiler_options.jit); XLA's convs are the reference."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 6, 32)), jnp.float32)
    block = ResnetBlock(64, norm_groups=8)
    params = block.init(jax.random.key(0), x)

    def grads():
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(block.apply(p, x))), argnums=(0, 1))(params, x)
    auto = im2col.resolve_implementation
    monkeypatch.setattr(im2col, "resolve_implementation",
                        lambda implementation, kernel_size, *args: "tap_grad" if tuple(kernel_size) == (3, 3)
                        else auto(implementation, kernel_size, *args))
    ours = grads()
    monkeypatch.setattr(im2col, "resolve_implementation", lambda *args: "xla")
    for want, have in zip(jax.tree.leaves(grads()), jax.tree.leaves(ours)):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)


def model_config(multipliers, space_to_depth_factor=1, upsample="depth_to_space", attention=False):
    return ConfigDict(dict(channels=8, channel_multipliers=multipliers, num_res_blocks=1, latent_channels=6,
                           attention_at_lowest=attention, norm_groups=4, dropout=0.0, upsample=upsample,
                           space_to_depth=space_to_depth_factor, dtype="float32"))


QUANTIZER = dict(num_codes=8, embedding_dim=3, lookup_dim=None, beta=0.25, l2_normalize_codes=False,
                 use_ema=False, ema_decay=0.99, ema_epsilon=1e-5, dead_code_threshold=0.0)


@pytest.mark.parametrize("multipliers,s2d,factor,upsample,attention", [
    ((1, 2, 2), 1, 4, "depth_to_space", False),
    ((1, 1, 2, 2), 1, 8, "nearest", True),
    ((1, 2, 2), 4, 16, "depth_to_space", False),
    ((1,), 4, 4, "depth_to_space", True),
])
def test_downsampling_factor_and_shapes(multipliers, s2d, factor, upsample, attention):
    config = model_config(multipliers, s2d, upsample, attention)
    assert downsampling_factor(config) == factor
    model = VQAutoencoder(model_config=config.to_dict(), quantizer_config=QUANTIZER, image_channels=3)
    x = jnp.zeros((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    z = model.apply(variables, x, method=VQAutoencoder.encode)
    assert z.shape == (2, 32 // factor, 32 // factor, 3) and z.dtype == jnp.float32
    reconstruction, aux = model.apply(variables, x)
    assert reconstruction.shape == x.shape and reconstruction.dtype == jnp.float32
    assert aux["indices"].shape == (2, 32 // factor, 32 // factor)
    decoded = model.apply(variables, aux["indices"], method=VQAutoencoder.decode_indices)
    np.testing.assert_allclose(np.asarray(decoded), np.asarray(reconstruction), rtol=1e-5, atol=1e-6)


def test_reconstruction_gradient_reaches_the_encoder_through_the_quantizer():
    config = model_config((1, 2), 2)
    model = VQAutoencoder(model_config=config.to_dict(), quantizer_config=QUANTIZER, image_channels=1)
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, size=(2, 16, 16, 1)).astype(np.float32))
    params = model.init(jax.random.key(0), x)["params"]
    grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x)[0] - x) ** 2))(params)
    assert float(jnp.abs(grads["encoder"]["conv_in"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["decoder"]["conv_out"]["kernel"]).sum()) > 0
