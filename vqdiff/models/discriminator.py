"""Discriminators for adversarial tokenizer training: taming's PatchGAN and a StyleGAN2-style residual one.

Both take NHWC images in [-1, 1] and return float32 logits: the PatchGAN one per overlapping patch
[B, h, w, 1], the residual discriminator one per image [B]. Their parameters are a tree of their own, for
an optimizer and train state apart from the tokenizer's.

No batch norm (taming's default): its running statistics would be one more mutable collection to thread
through the trainer and to sync across devices, and it makes an example's logit depend on the rest of its
batch, so that separate real and fake batches are told apart by their statistics. 'group' and 'layer'
normalise within each example, so without minibatch-stddev a logit depends on its own image alone.

References: Isola et al. 2017 (pix2pix, PatchGAN), Esser et al. 2021 (taming-transformers, N-layer
PatchGAN for VQGAN), Karras et al. 2018 (minibatch stddev), Karras et al. 2020 (StyleGAN2 residual D).
"""
import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vqdiff.models.group_norm import GroupNorm

KINDS = ("patchgan", "stylegan")
NORMS = ("group", "layer", "none")
_SLOPE = 0.2


def average_pool_2x(x):
    """2×2 mean pooling with stride 2; x: [B, H, W, C] -> [B, H // 2, W // 2, C]."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def minibatch_stddev(x, group_size: int, eps: float = 1e-8):
    """Appends one channel holding the std across a group of examples, averaged over H, W and C.

    x: [B, H, W, C] -> [B, H, W, C + 1]. The group size is the largest divisor of B that is at most
    `group_size`; example i shares its group with examples i ± B/G (StyleGAN's strided grouping).
    """
    b, h, w, c = x.shape
    groups = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = x.astype(jnp.float32).reshape(groups, b // groups, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + eps)
    feature = jnp.tile(jnp.mean(std, axis=(1, 2, 3)), groups)
    feature = jnp.broadcast_to(feature[:, None, None, None], (b, h, w, 1))
    return jnp.concatenate([x, feature.astype(x.dtype)], axis=-1)


def _normalize(x, norm: str, norm_groups: int, dtype, name: str):
    """GroupNorm with min(norm_groups, C) groups, LayerNorm over channels, or nothing."""
    if norm == "group":
        return GroupNorm(num_groups=min(norm_groups, x.shape[-1]), epsilon=1e-6, dtype=dtype, name=name)(x)
    if norm == "layer":
        return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)(x)
    return x


class PatchGANDiscriminator(nn.Module):
    """Taming's N-layer PatchGAN: images [B, H, W, C] -> patch logits [B, h, w, 1] (float32).

    conv4×4/2 → LeakyReLU, then `n_layers` conv4×4 (stride 2 but the last, which has stride 1) of width
    channels · min(2^i, 8), each → norm → LeakyReLU, then conv4×4/1 → 1 channel. All pad by 1, so a side
    of H (even at each stride-2 layer) ends at H / 2^n_layers − 2, and each logit sees a patch of
    9 · 2^n_layers − 2 pixels (70 for n_layers = 3). Convs followed by a norm have no bias.
    Kernels start from N(0, 0.02), as taming's.
    """
    channels: int = 64
    n_layers: int = 3
    norm: str = "group"
    norm_groups: int = 32
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"discriminator norm={self.norm!r}: use one of {', '.join(NORMS)}")
        if self.n_layers < 1:
            raise ValueError(f"discriminator n_layers={self.n_layers}: need at least 1")
        super().__post_init__()

    @nn.compact
    def __call__(self, images):
        conv = functools.partial(nn.Conv, kernel_size=(4, 4), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                 kernel_init=nn.initializers.normal(0.02))
        x = conv(self.channels, strides=(2, 2), name="conv_0")(images.astype(self.dtype))
        x = nn.leaky_relu(x, _SLOPE)
        for i in range(1, self.n_layers + 1):
            stride = 2 if i < self.n_layers else 1
            x = conv(self.channels * min(2**i, 8), strides=(stride, stride), use_bias=self.norm == "none",
                     name=f"conv_{i}")(x)
            x = nn.leaky_relu(_normalize(x, self.norm, self.norm_groups, self.dtype, f"norm_{i}"), _SLOPE)
        return conv(1, name=f"conv_{self.n_layers + 1}")(x).astype(jnp.float32)


class ResidualBlock(nn.Module):
    """(conv3×3 → LeakyReLU → conv3×3 → LeakyReLU → 2× average pool) + (2× average pool → 1×1 conv), / √2.

    x: [B, H, W, C] -> [B, H / 2, W / 2, features]. The skip has no bias.
    """
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        skip = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                       name="skip")(average_pool_2x(x))
        h = nn.leaky_relu(nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, name="conv_0")(x), _SLOPE)
        h = nn.leaky_relu(nn.Conv(self.features, (3, 3), dtype=self.dtype, name="conv_1")(h), _SLOPE)
        return (average_pool_2x(h) + skip) / math.sqrt(2.0)


def num_blocks_for(height: int, width: int, final_resolution: int) -> int:
    """How many halvings keep both sides even before halving and the smaller one ≥ final_resolution."""
    n = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) // 2 >= final_resolution:
        height, width, n = height // 2, width // 2, n + 1
    return n


class StyleGANDiscriminator(nn.Module):
    """StyleGAN2-style residual discriminator: images [B, H, W, C] -> one logit per image [B] (float32).

    1×1 conv (width `channels`) → LeakyReLU → `num_blocks` ResidualBlocks, block i of width
    min(channels · 2^(i+1), max_channels) → minibatch stddev (unless mbstd_group_size = 0) → conv3×3 →
    LeakyReLU → flatten → dense → LeakyReLU → dense → 1. With `num_blocks` None, images are halved while
    both sides stay even and the smaller side stays ≥ final_resolution (32 → 3 blocks, 256 → 6, 28 → 2).
    No blur, no equalised learning rate: Flax's default initialisers.
    """
    channels: int = 64
    max_channels: int = 512
    num_blocks: Optional[int] = None
    final_resolution: int = 4
    mbstd_group_size: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        b, h, w, _ = images.shape
        num_blocks = self.num_blocks
        if num_blocks is None:
            num_blocks = num_blocks_for(h, w, self.final_resolution)
        elif h % 2**num_blocks or w % 2**num_blocks:
            raise ValueError(f"images {h}×{w} cannot be halved num_blocks={num_blocks} times")
        x = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="from_rgb")(images.astype(self.dtype))
        x = nn.leaky_relu(x, _SLOPE)
        for i in range(num_blocks):
            x = ResidualBlock(min(self.channels * 2 ** (i + 1), self.max_channels), self.dtype,
                              name=f"block_{i}")(x)
        width = x.shape[-1]
        if self.mbstd_group_size:
            x = minibatch_stddev(x, self.mbstd_group_size)
        x = nn.leaky_relu(nn.Conv(width, (3, 3), dtype=self.dtype, name="conv_out")(x), _SLOPE)
        x = nn.leaky_relu(nn.Dense(width, dtype=self.dtype, name="dense")(x.reshape(b, -1)), _SLOPE)
        return nn.Dense(1, dtype=self.dtype, name="logits")(x)[:, 0].astype(jnp.float32)


_CLASSES = {"patchgan": PatchGANDiscriminator, "stylegan": StyleGANDiscriminator}


def build_discriminator(disc_config) -> nn.Module:
    """The discriminator named by disc_config['kind'] ('patchgan' | 'stylegan').

    The module's fields are read from the dict (missing ones keep their defaults; `dtype` may be a
    name such as 'bfloat16'); other keys, such as optimizer settings, are left to the trainer.
    """
    kind = disc_config.get("kind")
    if kind not in _CLASSES:
        raise ValueError(f"discriminator kind={kind!r}: use one of {', '.join(KINDS)}")
    cls = _CLASSES[kind]
    names = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    kwargs = {key: disc_config[key] for key in names if key in disc_config}
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return cls(**kwargs)
