"""Convolution as patch extraction + one matmul (im2col), for the shapes XLA's CPU convolution is slow at.

On XLA:CPU a convolution over a small feature map (AlexNet's 5×5 conv on 3×3 maps, 3×3 convs on 1×1
maps, LPIPS on 32-pixel images) ran at 3–5 GFLOP/s, and input gradients of strided convolutions were
10× the forward; the same arithmetic as strided slices, a concatenation and a dot runs near the matmul
peak, and its gradient is a dot plus a pad. `Conv` has nn.Conv's parameter names, shapes and
initialisers, so weights move between the two unchanged; it picks the im2col form on the CPU backend.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "im2col")


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


# 'auto' takes im2col on CPU for outputs of at most IM2COL_MAX_POSITIONS positions or strides of at least
# IM2COL_MIN_STRIDE. Measured on a 2-core CPU at batch 64 (forward / gradient, ms, XLA → im2col):
# AlexNet's 5×5 conv on 3×3 maps 112 / 132 → 12 / 28, its 3×3 convs on 1×1 maps 14 / 15 → 5 / 7, its
# 11×11 stride-4 conv on 32-pixel images 13 / 82 → 13 / 27; PatchGAN's 4×4 stride-2 convs on 16- and
# 32-pixel maps and 4×4 convs on 8×8 maps were faster as XLA convolutions.
IM2COL_MAX_POSITIONS = 16
IM2COL_MIN_STRIDE = 4


def use_im2col(implementation: str, output_positions: int, strides: Sequence[int]) -> bool:
    """Whether `implementation` ('auto' | 'xla' | 'im2col') means im2col for this output size and stride."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: use one of {IMPLEMENTATIONS}")
    if implementation == "auto":
        return jax.default_backend() == "cpu" and (output_positions <= IM2COL_MAX_POSITIONS
                                                   or min(strides) >= IM2COL_MIN_STRIDE)
    return implementation == "im2col"


class Conv(nn.Module):
    """A 2-D convolution with nn.Conv's params ('kernel' [kh, kw, C, O], 'bias' [O]); `implementation`
    'im2col' (conv2d_im2col), 'xla' (lax.conv_general_dilated) or 'auto' (im2col on CPU for small outputs
    and large strides, see IM2COL_MAX_POSITIONS; else xla)."""

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
        if use_im2col(self.implementation, positions, strides):
            y = conv2d_im2col(x, kernel, strides, padding, self.precision)
        else:
            y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=self.precision)
        return y if bias is None else y + bias
