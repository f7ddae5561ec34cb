"""im2col and tap-gradient convolutions: equal to XLA's convolution (values and gradients), drop-ins for nn.Conv."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqdiff.models.im2col import Conv, conv2d_im2col, conv2d_tap_grad, explicit_padding, resolve_implementation

CASES = [  # (channels, features, kernel, stride, padding, size)
    (3, 8, 11, 4, 2, 32),      # AlexNet conv1: strided, kernel not a multiple of the stride
    (8, 12, 5, 1, 2, 3),       # small map, padding larger than half of it
    (6, 5, 3, 1, 1, 1),        # 1×1 map: only the centre tap sees data
    (4, 7, 4, 2, 1, 15),       # odd size, stride 2: the last row/column is not read
    (2, 3, 3, 3, 0, 10),       # stride equal to the kernel
]


def reference(x, kernel, stride, padding):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("channels,features,k,stride,pad,size", CASES)
def test_values_and_gradients_equal_xla_convolution(channels, features, k, stride, pad, size):
    rng = np.random.default_rng(k * 100 + size)
    x = jnp.asarray(rng.normal(size=(2, size, size, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, channels, features)), jnp.float32)
    padding = ((pad, pad), (pad, pad))
    expected = reference(x, kernel, stride, padding)
    got = conv2d_im2col(x, kernel, (stride, stride), padding, precision=lax.Precision.HIGHEST)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)

    cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
    grads = [jax.grad(lambda a, b: jnp.sum(f(a, b) * cotangent), argnums=(0, 1))(x, kernel) for f in (
        lambda a, b: reference(a, b, stride, padding),
        lambda a, b: conv2d_im2col(a, b, (stride, stride), padding, precision=lax.Precision.HIGHEST))]
    for want, have in zip(*grads):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4)


TAP_CASES = [  # (channels, features, kernel, size, padding)
    (3, 4, 3, 7, ((1, 1), (1, 1))),      # SAME
    (2, 5, 3, 6, ((0, 1), (2, 0))),      # asymmetric
    (4, 3, 5, 4, ((3, 3), (0, 4))),      # padding beyond kernel − 1 on one side
    (3, 2, 4, 5, ((1, 2), (1, 2))),      # even kernel
    (5, 6, 1, 3, ((0, 0), (0, 0))),      # 1×1
]


@pytest.mark.parametrize("channels,features,k,size,padding", TAP_CASES)
def test_tap_grad_values_and_gradients_equal_xla_convolution(channels, features, k, size, padding):
    rng = np.random.default_rng(k * 10 + size)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, channels)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, channels, features)), jnp.float32)
    expected = reference(x, kernel, 1, padding)
    got = conv2d_tap_grad(x, kernel, (1, 1), padding, precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)

    cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
    grads = [jax.grad(lambda a, b: jnp.sum(f(a, b) * cotangent), argnums=(0, 1))(x, kernel) for f in (
        lambda a, b: reference(a, b, 1, padding),
        lambda a, b: conv2d_tap_grad(a, b, (1, 1), padding, precision=lax.Precision.HIGHEST))]
    for want, have in zip(*grads):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="stride 1"):
        conv2d_tap_grad(x, kernel, (2, 2), padding)


def test_tap_grad_module_is_a_drop_in_for_flax_conv():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 3)), jnp.float32)
    flax_conv = nn.Conv(4, (3, 3), precision=lax.Precision.HIGHEST)
    params = flax_conv.init(jax.random.key(0), x)
    ours = Conv(4, (3, 3), precision=lax.Precision.HIGHEST, implementation="tap_grad")
    grads = [jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x))))(params) for m in (flax_conv, ours)]
    for want, have in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "VALID", 1, ((0, 2), (1, 0))])
@pytest.mark.parametrize("implementation", ["im2col", "xla"])
def test_module_is_a_drop_in_for_flax_conv(padding, implementation):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 3)), jnp.float32)
    flax_conv = nn.Conv(4, (3, 3), strides=2, padding=padding, precision=lax.Precision.HIGHEST)
    params = flax_conv.init(jax.random.key(0), x)
    ours = Conv(4, (3, 3), strides=2, padding=padding, precision=lax.Precision.HIGHEST, implementation=implementation)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-5, atol=1e-5)


def test_same_padding_matches_the_output_size_ceil_n_over_s():
    assert explicit_padding("SAME", (3, 4), (2, 2), (9, 8)) == ((1, 1), (1, 1))
    assert explicit_padding("VALID", (3, 3), (1, 1), (5, 5)) == ((0, 0), (0, 0))


def test_auto_choice_and_errors():
    cpu = jax.default_backend() == "cpu"

    def auto(kernel, stride, channels, features, positions):
        return resolve_implementation("auto", (kernel, kernel), (stride, stride), channels, features, positions)
    im2col, tap_grad = ("im2col", "tap_grad") if cpu else ("xla", "xla")
    assert auto(3, 1, 8, 8, 9) == im2col and auto(11, 4, 3, 64, 49) == im2col
    # Outside vqdiff.compiler_options.jit (tests/test_compiler_options.py checks the inside).
    assert auto(3, 1, 64, 64, 1024) == tap_grad and auto(1, 1, 64, 128, 1024) == im2col
    assert auto(1, 1, 8, 64, 1024) == "xla"
    assert auto(3, 1, 3, 64, 4096) == "xla" and auto(3, 1, 64, 3, 4096) == "xla" and auto(3, 2, 64, 64, 1024) == "xla"
    assert resolve_implementation("im2col", (3, 3), (1, 1), 8, 8, 64) == "im2col"
    assert resolve_implementation("xla", (3, 3), (1, 1), 8, 8, 1) == "xla"
    with pytest.raises(ValueError, match="implementation='fast'"):
        resolve_implementation("fast", (3, 3), (1, 1), 8, 8, 1)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_im2col(jnp.zeros((1, 2, 2, 1)), jnp.zeros((3, 3, 1, 1)), (1, 1), ((0, 0), (0, 0)))
