"""GroupNorm over NHWC feature maps from per-channel sums: nn.GroupNorm's function and params, faster on CPU.

nn.GroupNorm reshapes [B, H, W, C] to [B, H, W, G, C/G] and reduces over the small trailing axis. Here the
mean and mean square of every channel are taken first ([B, C], reducing over H·W with the channels minor),
pooled per group, and the normalisation is one multiply-add per element with a per-(image, channel) scale and
shift. The variance is E[x²] − E[x]² (nn.GroupNorm's `use_fast_variance`), computed in float32. On a 2-core
CPU, GroupNorm + swish over the autoencoder's maps (batch 16, 32 groups) ran 2–6× faster forward and 1.0–2.5×
faster backward (benchmarks/autoencoder_layer_cost.py --only=norm).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float = 1e-6,
               dtype: Any = None) -> jax.Array:
    """x [B, ..., C] normalised per image over the spatial axes and each group of C/num_groups channels, then
    scaled and shifted per channel (scale, bias [C]); returned in `dtype` (default x.dtype)."""
    b, c = x.shape[0], x.shape[-1]
    if c % num_groups:
        raise ValueError(f"GroupNorm: {c} channels do not split into num_groups={num_groups} groups")
    flat = x.reshape(b, -1, c).astype(jnp.float32)
    group_mean = jnp.mean(flat, axis=1).reshape(b, num_groups, -1).mean(-1)                 # [B, G]
    group_square = jnp.mean(jnp.square(flat), axis=1).reshape(b, num_groups, -1).mean(-1)
    inverse_std = jax.lax.rsqrt(jnp.maximum(group_square - jnp.square(group_mean), 0.0) + epsilon)
    per_channel = lambda v: jnp.repeat(v, c // num_groups, axis=1)                          # [B, G] → [B, C]
    multiplier = per_channel(inverse_std) * scale.astype(jnp.float32)
    shift = bias.astype(jnp.float32) - per_channel(group_mean) * multiplier
    expand = (b,) + (1,) * (x.ndim - 2) + (c,)
    y = flat.reshape(x.shape) * multiplier.reshape(expand) + shift.reshape(expand)
    return y.astype(dtype or x.dtype)


class GroupNorm(nn.Module):
    """nn.GroupNorm(num_groups, epsilon) with its params ('scale' ones, 'bias' zeros, [C]), as `group_norm`."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        dtype = self.dtype or jnp.result_type(x, scale)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon, dtype)
