"""Convolution as patch extraction + one matmul (im2col), for the shapes XLA's CPU convolution is slow at.

On XLA:CPU a convolution over a small feature map (AlexNet's 5×5 conv on 3×3 maps, 3×3 convs on 1×1
maps, LPIPS on 32-pixel images) ran at 3–5 GFLOP/s, and input gradients of strided convolutions were
10× the forward; the same arithmetic as strided slices, a concatenation and a dot runs near the matmul
peak, and its gradient is a dot plus a pad. Over larger maps XLA's forward convolution and input gradient
are fast, but under XLA:CPU's default options (YNNPACK convolutions) its kernel gradient is not (6–12× the
forward for 3×3 kernels on 32- and 64-pixel maps of 64–256 channels): `conv2d_tap_grad` keeps XLA's forward
and input gradient and takes the kernel gradient as one matmul per kernel tap. `Conv` has nn.Conv's
parameter names, shapes and initialisers, so weights move between the forms unchanged; on the CPU backend
it picks a form by shape.

The trainers compile with vqdiff.compiler_options, which hands convolutions back to XLA's own path; there
XLA's kernel gradients are faster than the taps, and 'auto' takes them inside such a program (below).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vqdiff import compiler_options

IMPLEMENTATIONS = ("auto", "xla", "im2col", "tap_grad")


def explicit_padding(padding, kernel_size: Sequence[int], strides: Sequence[int], spatial: Sequence[int]):
    """nn.Conv-style padding ('SAME', 'VALID', an int, or (low, high) pairs) → ((low, high), (low, high))."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return tuple((0, 0) for _ in kernel_size)
        if padding.upper() != "SAME":
            raise ValueError(f"padding={padding!r}: use 'SAME', 'VALID', an int or (low, high) pairs")
        pads = []
        for n, k, s in zip(spatial, kernel_size, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return tuple((padding, padding) for _ in kernel_size)
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


def conv2d_im2col(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, precision=None) -> jax.Array:
    """x [B, H, W, C], kernel [kh, kw, C, O], padding ((top, bottom), (left, right)) → [B, oh, ow, O].

    Equal to lax.conv_general_dilated in NHWC/HWIO layout (no dilation, one feature group). A strided
    convolution first becomes a stride-1 one over space-to-depth blocks (kernel zero-padded to whole
    blocks), so the patches are (k/s)² slices of s²·C channels rather than k² slices of C.
    """
    kh, kw, channels, features = kernel.shape
    if x.shape[-1] != channels:
        raise ValueError(f"input has {x.shape[-1]} channels, the kernel {kernel.shape} expects {channels}")
    sh, sw = strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}×{kw} kernel does not fit the padded {x.shape[1]}×{x.shape[2]} input")
    if (sh, sw) != (1, 1):
        bh, bw = -(-kh // sh), -(-kw // sw)                      # kernel size in blocks
        rows, cols = (oh - 1 + bh) * sh, (ow - 1 + bw) * sw      # input extent the blocks cover
        x = jnp.pad(x[:, :rows, :cols], ((0, 0), (0, rows - min(rows, x.shape[1])),
                                         (0, cols - min(cols, x.shape[2])), (0, 0)))
        x = x.reshape(x.shape[0], rows // sh, sh, cols // sw, sw, channels).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(*x.shape[:3], sh * sw * channels)
        kernel = jnp.pad(kernel, ((0, bh * sh - kh), (0, bw * sw - kw), (0, 0), (0, 0)))
        kernel = kernel.reshape(bh, sh, bw, sw, channels, features).transpose(0, 2, 1, 3, 4, 5)
        kernel = kernel.reshape(bh, bw, sh * sw * channels, features)
        kh, kw, channels = bh, bw, sh * sw * channels
    # Patch layout (i, j, c) matches kernel.reshape(kh * kw * C, O).
    patches = jnp.concatenate([x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.dot(patches, kernel.reshape(kh * kw * channels, features), precision=precision)


def conv2d_xla(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, precision=None) -> jax.Array:
    """lax.conv_general_dilated in NHWC/HWIO layout; arguments as conv2d_im2col's."""
    return lax.conv_general_dilated(x, kernel, tuple(strides), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=precision)


def conv2d_kernel_gradient(x: jax.Array, dy: jax.Array, kernel_size: Sequence[int], padding,
                           precision=None) -> jax.Array:
    """Kernel gradient [kh, kw, C, O] of a stride-1 conv2d: x [B, H, W, C], output gradient dy [B, oh, ow, O].

    One matmul per tap: dK[i, j] = Σ_{b,u,v} x[b, u, v]ᵀ dy[b, u + top − i, v + left − j] (zero outside dy), so
    dy, padded once, is sliced per tap and x is read whole; faster than slicing x or concatenating patches.
    """
    kh, kw = kernel_size
    (top, bottom), (left, right) = padding
    h, w = x.shape[1:3]
    dy = lax.pad(dy, jnp.zeros((), dy.dtype),
                 ((0, 0, 0), (kh - 1 - top, kh - 1 - bottom, 0), (kw - 1 - left, kw - 1 - right, 0), (0, 0, 0)))
    batch_and_positions = (((0, 1, 2), (0, 1, 2)), ((), ()))
    taps = [lax.dot_general(x, dy[:, kh - 1 - i:kh - 1 - i + h, kw - 1 - j:kw - 1 - j + w], batch_and_positions,
                            precision=precision) for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh, kw, x.shape[-1], dy.shape[-1])


def conv2d_tap_grad(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, precision=None) -> jax.Array:
    """conv2d_xla's value and input gradient, with conv2d_kernel_gradient's kernel gradient (stride 1 only)."""
    if tuple(strides) != (1, 1):
        raise ValueError(f"conv2d_tap_grad takes stride 1, not {tuple(strides)}")
    return _conv2d_tap_grad(x, kernel, tuple(tuple(p) for p in padding), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d_tap_grad(x, kernel, padding, precision):
    return conv2d_xla(x, kernel, (1, 1), padding, precision)


def _tap_grad_forward(x, kernel, padding, precision):
    return conv2d_xla(x, kernel, (1, 1), padding, precision), (x, kernel)


def _tap_grad_backward(padding, precision, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: conv2d_xla(x, kernel, (1, 1), padding, precision), x)
    return input_vjp(dy)[0], conv2d_kernel_gradient(x, dy, kernel.shape[:2], padding, precision).astype(kernel.dtype)


_conv2d_tap_grad.defvjp(_tap_grad_forward, _tap_grad_backward)

# 'auto' on CPU takes im2col for outputs of at most IM2COL_MAX_POSITIONS positions or strides of at least
# IM2COL_MIN_STRIDE. Measured on a 2-core CPU at batch 64 (forward / gradient, ms, XLA → im2col):
# AlexNet's 5×5 conv on 3×3 maps 112 / 132 → 12 / 28, its 3×3 convs on 1×1 maps 14 / 15 → 5 / 7, its
# 11×11 stride-4 conv on 32-pixel images 13 / 82 → 13 / 27; PatchGAN's 4×4 stride-2 convs on 16- and
# 32-pixel maps and 4×4 convs on 8×8 maps were faster as XLA convolutions.
IM2COL_MAX_POSITIONS = 16
IM2COL_MIN_STRIDE = 4
# Larger stride-1 convolutions with at least MIN_CHANNELS input and output channels: a 1×1 kernel is a plain
# dot (im2col); other kernels take tap_grad under XLA's default options, and XLA's convolution in a program
# that vqdiff.compiler_options.jit compiles (convolutions_off_ynnpack()). There XLA's kernel gradients beat
# tap_grad's per-tap matmuls, measured with benchmarks/autoencoder_layer_cost.py at batch 16 (forward + whole
# gradient, ms, tap_grad → XLA, PyTorch for scale): 3×3 on 64-pixel maps 64→64 198 → 111 (123), 128→64 267 →
# 219 (225); on 32-pixel maps 128→128 122 → 90 (92); on 16-pixel 256→256 103 → 89 (89); the VQ autoencoder's
# step (benchmarks/throughput.py) 4.12 → 4.01 s. Under XLA's defaults the same step took 4.41 s with tap_grad
# and 7.27 s with XLA's (YNNPACK's) kernel gradients: there, measured at batch 16 (kernel gradient, ms, XLA →
# taps, with XLA's forward for scale), 3×3 on 64-pixel maps 128→128 2166 → 346 (412), 64→64 406 → 178 (71); on
# 32-pixel 256→256 602 → 227 (183); on 16-pixel 256→256 71 → 49 (37). With 3 channels in or out (an
# autoencoder's conv_in / conv_out) and for stride 2, XLA's was as fast or faster.
MIN_CHANNELS = 32


def resolve_implementation(implementation: str, kernel_size: Sequence[int], strides: Sequence[int],
                           channels: int, features: int, output_positions: int) -> str:
    """The form ('xla' | 'im2col' | 'tap_grad') that `implementation` means for this convolution."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: use one of {IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    if jax.default_backend() != "cpu":
        return "xla"
    if output_positions <= IM2COL_MAX_POSITIONS or min(strides) >= IM2COL_MIN_STRIDE:
        return "im2col"
    if max(strides) == 1 and min(channels, features) >= MIN_CHANNELS:
        if tuple(kernel_size) == (1, 1):
            return "im2col"
        return "xla" if compiler_options.convolutions_off_ynnpack() else "tap_grad"
    return "xla"


FORMS = {"xla": conv2d_xla, "im2col": conv2d_im2col, "tap_grad": conv2d_tap_grad}


class Conv(nn.Module):
    """A 2-D convolution with nn.Conv's params ('kernel' [kh, kw, C, O], 'bias' [O]); `implementation`
    'xla' (conv2d_xla), 'im2col' (conv2d_im2col), 'tap_grad' (conv2d_tap_grad) or 'auto' (by shape on
    CPU, see resolve_implementation; else xla)."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Any = None
    precision: Any = None
    implementation: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_size = tuple(self.kernel_size)
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (*kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        padding = explicit_padding(self.padding, kernel_size, strides, x.shape[1:3])
        positions = 1
        for n, k, s, (low, high) in zip(x.shape[1:3], kernel_size, strides, padding):
            positions *= max((n + low + high - k) // s + 1, 0)
        conv = FORMS[resolve_implementation(self.implementation, kernel_size, strides, x.shape[-1], self.features,
                                            positions)]
        y = conv(x, kernel, strides, padding, self.precision)
        return y if bias is None else y + bias
