"""vqdiff.compiler_options: the XLA:CPU options take effect, keep values, and fall back when rejected."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vqdiff import compiler_options
from vqdiff.models.im2col import resolve_implementation


def _conv(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _ynn_fused_ops(hlo_text: str) -> set[str]:
    """Names of the HLO ops inside the computations that YNNPACK fusions call."""
    called = set(re.findall(r'calls=%([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo_text))
    ops = set()
    for name in called:
        body = re.search(r"^%?" + re.escape(name) + r" .*?\{\n(.*?)\n\}", hlo_text, re.M | re.S)
        ops |= set(re.findall(r"= \S+ ([a-z\-]+)\(", body.group(1)))
    return ops


def test_options_name_the_fusion_types():
    assert compiler_options.options("convolutional") == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert compiler_options.options("transformer") == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match=r"program kind 'cnn'.*convolutional.*transformer"):
        compiler_options.options("cnn")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_convolutional_program_keeps_convolutions_out_of_ynnpack_with_the_same_values():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 32)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 32, 32)) * 0.1, jnp.float32)
    # A convolution and a dot (a convolution feeding a reduction may join YNNPACK's reduce fusion).
    fn = lambda x, k: (jnp.tanh(_conv(x, k)), x.reshape(-1, 32) @ k[0, 0])
    options = compiler_options.for_program("convolutional")
    assert options == compiler_options.options("convolutional")
    tuned = jax.jit(fn).lower(x, kernel).compile(options)
    fused = _ynn_fused_ops(tuned.as_text())
    assert "convolution" not in fused and "dot" in fused
    conv, product = tuned(x, kernel)
    x64, k64 = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    padded = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
    brute = sum(np.einsum("bhwc,cd->bhwd", padded[:, i:i + 16, j:j + 16], k64[i, j])
                for i in range(3) for j in range(3))
    np.testing.assert_allclose(np.asarray(conv), np.tanh(brute), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(product), x64.reshape(-1, 32) @ k64[0, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_rejected_options_fall_back_to_xla_defaults_with_a_warning():
    bogus = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_NO_SUCH_TYPE"),)
    with pytest.warns(UserWarning, match="rejected compiler options"):
        assert compiler_options._accepted(bogus) is False


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_jit_marks_its_trace_so_im2col_takes_xla_kernel_gradients():
    seen = []

    def double(x):
        seen.append((compiler_options.convolutions_off_ynnpack(),
                     resolve_implementation("auto", (3, 3), (1, 1), 64, 64, 1024)))
        return 2 * x

    np.testing.assert_array_equal(compiler_options.jit(double, "transformer")(jnp.ones(3)), np.full(3, 2.0))
    double(jnp.ones(3))
    jax.jit(double)(jnp.ones(3))
    assert seen == [(True, "xla"), (False, "tap_grad"), (False, "tap_grad")]
