"""Vector quantisation: nearest-code lookup, straight-through, EMA codebook, dead-code restart.

The math is in pure functions on arrays; `VectorQuantizer` only owns the codebook (a param, or EMA
state in the 'quantizer_stats' collection) and the optional factorised projections of ViT-VQGAN
(Yu et al. 2021). Everything is computed in float32.

References: van den Oord et al. 2017 (VQ-VAE, EMA codebook in the appendix), Razavi et al. 2019
(VQ-VAE-2), Yu et al. 2021 (ViT-VQGAN: factorised, l2-normalised codes).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

QUANTIZER_STATS = "quantizer_stats"


def l2_normalize(x, axis=-1, eps=1e-6):
    """Scales `x` to unit l2 norm along `axis`; norms below `eps` are treated as `eps`."""
    sum_sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    # rsqrt of a clamped sum keeps the gradient finite at x = 0, unlike x / norm.
    return x * jax.lax.rsqrt(jnp.maximum(sum_sq, eps * eps))


def squared_distances(z, codebook):
    """Squared l2 distances as ‖z‖² − 2 z·c + ‖c‖²; z: [N, D], codebook: [K, D] -> [N, K]."""
    z = z.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    z_sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
    codes_sq = jnp.sum(jnp.square(codebook), axis=-1)
    return z_sq - 2.0 * z @ codebook.T + codes_sq[None, :]


def nearest_code_indices(z, codebook, chunk_size=8192):
    """Index of the nearest code, z: [N, D], codebook: [K, D] -> [N] int32.

    Rows are processed `chunk_size` at a time, so at most a [chunk_size, K] distance matrix exists.
    """
    n, dim = z.shape
    chunk = max(1, min(chunk_size, n))
    num_chunks = -(-n // chunk)
    z = jnp.pad(z, ((0, num_chunks * chunk - n), (0, 0)))
    # Block j holds rows j, j + num_chunks, ...: a batch sharded over its rows stays sharded inside
    # every block, instead of each block living on one device.
    blocks = z.reshape(chunk, num_chunks, dim).swapaxes(0, 1)

    def block_indices(z_block):
        return jnp.argmin(squared_distances(z_block, codebook), axis=-1).astype(jnp.int32)

    indices = jax.lax.map(block_indices, blocks)
    return indices.swapaxes(0, 1).reshape(-1)[:n]


def straight_through(z, z_q):
    """Forward value z_q, gradient passed to z unchanged (none to z_q). z, z_q: [..., D]."""
    return z + jax.lax.stop_gradient(z_q - z)


def vq_losses(z, z_q):
    """(codebook_loss, commitment_loss) = (mean ‖sg(z) − z_q‖², mean ‖z − sg(z_q)‖²).

    z, z_q: [..., D]; the means run over all elements; float32 scalars.
    """
    z = z.astype(jnp.float32)
    z_q = z_q.astype(jnp.float32)
    codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - z_q))
    commitment_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(z_q)))
    return codebook_loss, commitment_loss


def ema_codebook_update(cluster_size, embed_sum, z, indices, *, decay, epsilon, mask=None):
    """One EMA step of per-code counts and sums, and the codebook they define.

    cluster_size: [K], embed_sum: [K, D], z: [N, D], indices: [N],
    mask: [N] (1 = real row, 0 = padding).
    Returns (cluster_size [K], embed_sum [K, D], codebook [K, D]); the codebook divides by
    Laplace-smoothed counts so that codes with no assignments do not divide by zero.
    """
    num_codes = cluster_size.shape[0]
    z = z.astype(jnp.float32)
    weights = jnp.ones(z.shape[0], jnp.float32) if mask is None else mask.astype(jnp.float32)
    counts = jax.ops.segment_sum(weights, indices, num_segments=num_codes)
    sums = jax.ops.segment_sum(z * weights[:, None], indices, num_segments=num_codes)
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * sums
    total = jnp.sum(cluster_size)
    smoothed = (cluster_size + epsilon) / (total + num_codes * epsilon) * total
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def restart_dead_codes(codebook, cluster_size, embed_sum, z, rng, *, threshold, mask=None):
    """Replaces codes whose EMA count is below `threshold` with rows of z drawn with `rng`.

    codebook: [K, D], cluster_size: [K], embed_sum: [K, D], z: [N, D],
    mask: [N] (rows with 0 are never drawn).
    Returns (codebook, cluster_size, embed_sum): a restarted code gets cluster_size 1 and embed_sum
    equal to itself, so the next EMA step keeps it; other codes are returned bit-identical.
    A pure function of its inputs: replicas that share `rng` and the global batch agree.
    """
    num_codes = codebook.shape[0]
    z = z.astype(codebook.dtype)
    dead = cluster_size < threshold
    if mask is None:
        probs = None
    else:
        weights = mask.astype(jnp.float32)
        total = jnp.sum(weights)
        # With no real row there is nothing to restart from: keep every code.
        dead = dead & (total > 0)
        probs = weights / jnp.maximum(total, 1.0)
    rows = jax.random.choice(rng, z.shape[0], shape=(num_codes,), replace=True, p=probs)
    new_codes = z[rows]
    codebook = jnp.where(dead[:, None], new_codes, codebook)
    cluster_size = jnp.where(dead, jnp.ones_like(cluster_size), cluster_size)
    embed_sum = jnp.where(dead[:, None], new_codes, embed_sum)
    return codebook, cluster_size, embed_sum


def codebook_metrics(indices, num_codes, mask=None):
    """Usage of the codebook in a batch: {'perplexity', 'codes_used'}, float32 scalars.

    indices: any shape of ints in [0, num_codes); mask: indices' shape, weight of each index.
    perplexity = exp(entropy of the code histogram); codes_used = number of distinct codes.
    """
    indices = indices.reshape(-1)
    if mask is None:
        weights = jnp.ones(indices.shape, jnp.float32)
    else:
        weights = mask.astype(jnp.float32).reshape(-1)
    counts = jax.ops.segment_sum(weights, indices, num_segments=num_codes)
    probs = counts / jnp.maximum(jnp.sum(counts), 1e-12)
    entropy = -jnp.sum(probs * jnp.log(jnp.where(probs > 0, probs, 1.0)))
    return {
        "perplexity": jnp.exp(entropy).astype(jnp.float32),
        "codes_used": jnp.sum(counts > 0).astype(jnp.float32),
    }


class VectorQuantizer(nn.Module):
    """Vector quantiser of the last axis: optional factorised lookup, l2 codes, EMA and restart.

    `__call__` takes z: [..., D] (D = embedding_dim) and returns (z_q, aux): z_q has z's shape
    (float32) and is straight-through; aux is a flat dict of float32 losses and metrics, plus
    int32 `indices`.
    Training with EMA needs 'quantizer_stats' mutable, and a 'quantizer' rng when
    dead_code_threshold > 0.
    """
    num_codes: int
    embedding_dim: int
    lookup_dim: int | None = None
    beta: float = 0.25
    l2_normalize_codes: bool = False
    use_ema: bool = False
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_threshold: float = 0.0
    lookup_chunk_size: int = 8192

    def setup(self):
        code_dim = self.lookup_dim or self.embedding_dim
        shape = (self.num_codes, code_dim)
        init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
        if self.lookup_dim is not None:
            self.project_in = nn.Dense(self.lookup_dim, name="project_in")
            self.project_out = nn.Dense(self.embedding_dim, name="project_out")
        if self.use_ema:
            self.ema_codebook = self.variable(
                QUANTIZER_STATS, "codebook",
                lambda: init(self.make_rng("params"), shape, jnp.float32))
            self.cluster_size = self.variable(
                QUANTIZER_STATS, "cluster_size",
                lambda: jnp.ones((self.num_codes,), jnp.float32))
            self.embed_sum = self.variable(
                QUANTIZER_STATS, "embed_sum", lambda: self.ema_codebook.value)
        else:
            self.codebook = self.param("codebook", init, shape, jnp.float32)

    def _lookup_codebook(self):
        """Codes as used by the lookup: [K, lookup_dim or D]."""
        codebook = self.ema_codebook.value if self.use_ema else self.codebook
        return l2_normalize(codebook) if self.l2_normalize_codes else codebook

    def _lookup_encodings(self, z):
        """z: [N, D] -> encodings in lookup space [N, lookup_dim or D]."""
        z = z.astype(jnp.float32)
        if self.lookup_dim is not None:
            z = self.project_in(z)
        return l2_normalize(z) if self.l2_normalize_codes else z

    def _to_output(self, codes):
        """Lookup-space vectors [..., lookup_dim or D] -> [..., D]."""
        return self.project_out(codes) if self.lookup_dim is not None else codes

    def __call__(self, z, *, train: bool, mask=None):
        """z: [B, ..., D], mask: [B] per-example weight (EMA counts and metrics) -> (z_q, aux)."""
        lead_shape = z.shape[:-1]
        encodings = self._lookup_encodings(z.reshape(-1, z.shape[-1]))
        codebook = self._lookup_codebook()
        indices = nearest_code_indices(encodings, codebook, self.lookup_chunk_size)
        codes = jnp.take(codebook, indices, axis=0)
        codebook_loss, commitment_loss = vq_losses(encodings, codes)
        z_q = self._to_output(straight_through(encodings, codes))

        weights = None
        if mask is not None:
            per_example = mask.astype(jnp.float32)
            per_example = per_example.reshape(mask.shape + (1,) * (len(lead_shape) - 1))
            weights = jnp.broadcast_to(per_example, lead_shape).reshape(-1)

        if (self.use_ema and train and self.is_mutable_collection(QUANTIZER_STATS)
                and not self.is_initializing()):
            self._update_stats(jax.lax.stop_gradient(encodings), indices, weights)

        if self.use_ema:
            loss = self.beta * commitment_loss
        else:
            loss = codebook_loss + self.beta * commitment_loss
        aux = {
            "loss": loss,
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "indices": indices.reshape(lead_shape),
            **codebook_metrics(indices, self.num_codes, weights),
        }
        return z_q.reshape(lead_shape + (self.embedding_dim,)), aux

    def _update_stats(self, encodings, indices, weights):
        """EMA step, then dead-code restart; encodings: [N, d], indices: [N], weights: [N]|None."""
        cluster_size, embed_sum, codebook = ema_codebook_update(
            self.cluster_size.value, self.embed_sum.value, encodings, indices,
            decay=self.ema_decay, epsilon=self.ema_epsilon, mask=weights)
        if self.dead_code_threshold > 0:
            codebook, cluster_size, embed_sum = restart_dead_codes(
                codebook, cluster_size, embed_sum, encodings, self.make_rng("quantizer"),
                threshold=self.dead_code_threshold, mask=weights)
        self.ema_codebook.value = codebook
        self.cluster_size.value = cluster_size
        self.embed_sum.value = embed_sum

    def encode_indices(self, z):
        """z: [..., D] -> int32 code indices [...]."""
        encodings = self._lookup_encodings(z.reshape(-1, z.shape[-1]))
        indices = nearest_code_indices(encodings, self._lookup_codebook(), self.lookup_chunk_size)
        return indices.reshape(z.shape[:-1])

    def embed_indices(self, indices):
        """int indices [...] -> embeddings [..., D], equal to the forward value of z_q."""
        return self._to_output(jnp.take(self._lookup_codebook(), indices, axis=0))
