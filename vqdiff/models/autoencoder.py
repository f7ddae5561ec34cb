"""Convolutional ResNet encoder/decoder of the taming-transformers / latent-diffusion family.

Layout (NHWC): conv_in → per level [residual blocks (+ attention) → downsample] → middle
[res, attention, res] → GroupNorm, swish, conv_out. The decoder mirrors it with one more residual
block per level. The downsampling factor is 2 ** (len(channel_multipliers) - 1). Convolutions are
im2col.Conv: nn.Conv's params, with a form picked by shape on CPU (XLA's kernel gradients are slow there).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vqdiff.models.group_norm import GroupNorm
from vqdiff.models.im2col import Conv
from vqdiff.models.nearest_upsample_conv import NearestUpsampleConv
from vqdiff.models.quantizer import VectorQuantizer


def space_to_depth(x, block_size: int):
    """[B, H·s, W·s, C] → [B, H, W, C·s²], the inverse of `depth_to_space`."""
    b, h, w, c = x.shape
    s = block_size
    x = x.reshape(b, h // s, s, w // s, s, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // s, w // s, s * s * c)


def depth_to_space(x, block_size: int):
    """[B, H, W, C·s²] → [B, H·s, W·s, C] (pixel shuffle, channel-minor as in TF)."""
    b, h, w, c = x.shape
    s = block_size
    x = x.reshape(b, h, w, s, s, c // (s * s))
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * s, w * s, c // (s * s))


class ResnetBlock(nn.Module):
    """GroupNorm → swish → conv3×3, twice, with a 1×1 shortcut when the width changes."""
    out_channels: int
    norm_groups: int = 32
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv1")(nn.swish(h))
        h = GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype, name="norm2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(h))
        h = Conv(self.out_channels, (3, 3), dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, (1, 1), dtype=self.dtype, name="shortcut")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection (LDM's AttnBlock)."""
    norm_groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(y).reshape(b, h * w, c) for n in ("q", "k", "v"))
        y = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])[:, :, 0]
        y = nn.Dense(c, dtype=self.dtype, name="proj_out")(y.reshape(b, h, w, c))
        return x + y


class Downsample(nn.Module):
    """Stride-2 3×3 conv with taming's asymmetric (0, 1) padding."""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", dtype=self.dtype, name="conv")(x)


class Upsample(nn.Module):
    """×2 upsampling. 'depth_to_space': conv3×3 to 4C then pixel shuffle (cheap gradients on XLA:CPU);
    'nearest': nearest-neighbour resize then conv3×3 (the LDM/taming layout, for checkpoint interop), computed
    at the input resolution as one 2×2 convolution to the four output phases (vqdiff.models.nearest_upsample_conv)."""
    method: str = "depth_to_space"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if self.method == "depth_to_space":
            return depth_to_space(Conv(4 * c, (3, 3), dtype=self.dtype, name="conv")(x), 2)
        if self.method == "nearest":
            return NearestUpsampleConv(c, dtype=self.dtype, name="conv")(x)
        raise ValueError(f"model.upsample={self.method!r}: use 'depth_to_space' or 'nearest'")


class MiddleBlock(nn.Module):
    """Residual block, optional attention, residual block at the lowest resolution."""
    channels: int
    attention: bool
    norm_groups: int
    dropout: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        block = lambda name: ResnetBlock(self.channels, self.norm_groups, self.dropout, self.dtype, name=name)
        x = block("res_1")(x, train=train)
        if self.attention:
            x = AttentionBlock(self.norm_groups, self.dtype, name="attention")(x)
        return block("res_2")(x, train=train)


def _middle_attention(coder) -> bool:
    """Whether the middle block attends: `middle_attention`, or `attention_at_lowest` when it is None."""
    return coder.attention_at_lowest if coder.middle_attention is None else coder.middle_attention


class Encoder(nn.Module):
    """Image [B, H, W, C] in [-1, 1] → latent [B, H/f, W/f, latent_channels].

    `attention_at_lowest` adds attention after every residual block of the lowest level (and, unless
    `middle_attention` says otherwise, in the middle block); `middle_attention` alone gives the LDM/taming
    first-stage layout with `attn_resolutions=[]`.
    """
    channels: int
    channel_multipliers: Sequence[int]
    num_res_blocks: int
    latent_channels: int
    attention_at_lowest: bool = False
    middle_attention: bool | None = None
    norm_groups: int = 32
    dropout: float = 0.0
    space_to_depth: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.space_to_depth > 1:
            x = space_to_depth(x, self.space_to_depth)
        x = Conv(self.channels, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        lowest = len(self.channel_multipliers) - 1
        for level, mult in enumerate(self.channel_multipliers):
            for i in range(self.num_res_blocks):
                x = ResnetBlock(self.channels * mult, self.norm_groups, self.dropout, self.dtype,
                                name=f"down_{level}_res_{i}")(x, train=train)
                if self.attention_at_lowest and level == lowest:
                    x = AttentionBlock(self.norm_groups, self.dtype, name=f"down_{level}_attention_{i}")(x)
            if level != lowest:
                x = Downsample(self.dtype, name=f"down_{level}_downsample")(x)
        x = MiddleBlock(x.shape[-1], _middle_attention(self), self.norm_groups, self.dropout, self.dtype,
                        name="middle")(x, train=train)
        x = GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype, name="norm_out")(x)
        return Conv(self.latent_channels, (3, 3), dtype=self.dtype, name="conv_out")(nn.swish(x))


class Decoder(nn.Module):
    """Latent [B, h, w, latent_channels] → image [B, h·f, w·f, out_channels]; attention as in `Encoder`."""
    channels: int
    channel_multipliers: Sequence[int]
    num_res_blocks: int
    out_channels: int
    attention_at_lowest: bool = False
    middle_attention: bool | None = None
    norm_groups: int = 32
    dropout: float = 0.0
    upsample: str = "depth_to_space"
    space_to_depth: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z, *, train: bool = False):
        lowest = len(self.channel_multipliers) - 1
        x = Conv(self.channels * self.channel_multipliers[-1], (3, 3), dtype=self.dtype,
                    name="conv_in")(z.astype(self.dtype))
        x = MiddleBlock(x.shape[-1], _middle_attention(self), self.norm_groups, self.dropout, self.dtype,
                        name="middle")(x, train=train)
        for level in reversed(range(len(self.channel_multipliers))):
            for i in range(self.num_res_blocks + 1):
                x = ResnetBlock(self.channels * self.channel_multipliers[level], self.norm_groups,
                                self.dropout, self.dtype, name=f"up_{level}_res_{i}")(x, train=train)
                if self.attention_at_lowest and level == lowest:
                    x = AttentionBlock(self.norm_groups, self.dtype, name=f"up_{level}_attention_{i}")(x)
            if level != 0:
                x = Upsample(self.upsample, self.dtype, name=f"up_{level}_upsample")(x)
        x = GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype, name="norm_out")(x)
        s = self.space_to_depth
        x = Conv(self.out_channels * s * s, (3, 3), dtype=self.dtype, name="conv_out")(nn.swish(x))
        if s > 1:
            x = depth_to_space(x, s)
        return x.astype(jnp.float32)


class VQAutoencoder(nn.Module):
    """Encoder → 1×1 quant_conv → vector quantizer → 1×1 post_quant_conv → decoder.

    `model_config` and `quantizer_config` are the `config.model` / `config.quantizer` dicts.
    Call with `train=True` and `mutable=['quantizer_stats']` (EMA codebook) during training.
    """
    model_config: dict
    quantizer_config: dict
    image_channels: int

    def setup(self):
        m, q = self.model_config, self.quantizer_config
        dtype = jnp.dtype(m.get("dtype", "float32"))
        shared = dict(channels=m["channels"], channel_multipliers=tuple(m["channel_multipliers"]),
                      num_res_blocks=m["num_res_blocks"], attention_at_lowest=m["attention_at_lowest"],
                      middle_attention=m.get("middle_attention"),
                      norm_groups=m["norm_groups"], dropout=m["dropout"],
                      space_to_depth=m["space_to_depth"], dtype=dtype)
        self.encoder = Encoder(latent_channels=m["latent_channels"], **shared)
        self.decoder = Decoder(out_channels=self.image_channels, upsample=m["upsample"], **shared)
        self.quant_conv = Conv(q["embedding_dim"], (1, 1), name="quant_conv")
        self.post_quant_conv = Conv(m["latent_channels"], (1, 1), name="post_quant_conv")
        self.quantizer = VectorQuantizer(
            num_codes=q["num_codes"], embedding_dim=q["embedding_dim"], lookup_dim=q.get("lookup_dim"),
            beta=q["beta"], l2_normalize_codes=q["l2_normalize_codes"], use_ema=q["use_ema"],
            ema_decay=q["ema_decay"], ema_epsilon=q["ema_epsilon"],
            dead_code_threshold=q["dead_code_threshold"], name="quantizer")

    def encode(self, x, *, train: bool = False):
        """Image [B, H, W, C] → pre-quantisation latent [B, h, w, embedding_dim] (float32)."""
        return self.quant_conv(self.encoder(x, train=train).astype(jnp.float32))

    def quantize(self, z, *, train: bool = False, mask=None):
        """Latent → (straight-through quantised latent, quantizer aux dict)."""
        return self.quantizer(z, train=train, mask=mask)

    def decode(self, z_q, *, train: bool = False):
        """Quantised latent [B, h, w, embedding_dim] → image [B, H, W, C] (float32)."""
        return self.decoder(self.post_quant_conv(z_q), train=train)

    def decode_indices(self, indices):
        """Code indices [B, h, w] → image."""
        return self.decode(self.quantizer.embed_indices(indices))

    def __call__(self, x, *, train: bool = False, mask=None):
        z_q, aux = self.quantize(self.encode(x, train=train), train=train, mask=mask)
        return self.decode(z_q, train=train), aux


def downsampling_factor(model_config) -> int:
    """Spatial reduction of the encoder: space_to_depth · 2 ** (levels - 1)."""
    return model_config.space_to_depth * 2 ** (len(model_config.channel_multipliers) - 1)
