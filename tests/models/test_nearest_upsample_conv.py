"""Nearest upsampling + 3×3 conv computed at the input resolution: equal to upsampling then convolving."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqdiff.models.im2col import FORMS
from vqdiff.models.nearest_upsample_conv import NearestUpsampleConv, nearest_upsample_conv3x3, phase_kernels


def upsample_then_convolve(x, kernel):
    """The layer as LDM/taming write it: repeat every pixel 2×2, then a 'SAME' 3×3 convolution."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def test_phase_kernels_sum_the_taps_that_read_the_same_input_pixel():
    kernel = np.arange(9.0).reshape(3, 3, 1, 1)
    k = np.asarray(phase_kernels(jnp.asarray(kernel)))[..., 0, 0]            # [a, b, 2, 2]
    w = kernel[..., 0, 0]
    np.testing.assert_array_equal(k[0][0], [[w[0, 0], w[0, 1] + w[0, 2]],
                                            [w[1, 0] + w[2, 0], w[1:, 1:].sum()]])
    np.testing.assert_array_equal(k[1][1], [[w[:2, :2].sum(), w[0, 2] + w[1, 2]],
                                            [w[2, 0] + w[2, 1], w[2, 2]]])
    assert k.sum(axis=(2, 3)).tolist() == [[w.sum()] * 2] * 2                # every phase sees every weight once


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("height,width,channels,features", [(4, 4, 3, 5), (3, 5, 2, 4), (1, 1, 4, 2)])
def test_values_and_gradients_equal_upsampling_then_convolving(form, height, width, channels, features):
    rng = np.random.default_rng(height * 10 + width)
    x = jnp.asarray(rng.normal(size=(2, height, width, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, channels, features)), jnp.float32)
    conv = lambda *args: FORMS[form](*args, precision=lax.Precision.HIGHEST)
    expected = upsample_then_convolve(x, kernel)
    got = nearest_upsample_conv3x3(x, kernel, conv)
    assert got.shape == (2, 2 * height, 2 * width, features)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
    grads = [jax.grad(lambda a, b: jnp.sum(f(a, b) * cotangent), argnums=(0, 1))(x, kernel)
             for f in (upsample_then_convolve, lambda a, b: nearest_upsample_conv3x3(a, b, conv))]
    for want, have in zip(*grads):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4)


def test_module_has_nn_conv_params_and_applies_them_after_upsampling():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 32)), jnp.float32)
    layer = NearestUpsampleConv(features=32)
    params = layer.init(jax.random.key(0), x)
    reference = nn.Conv(32, (3, 3))
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference.init(jax.random.key(0), x))
    params = jax.tree.map(lambda p: p + 0.1, params)                        # a non-zero bias
    expected = reference.apply(params, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-4, atol=1e-4)
