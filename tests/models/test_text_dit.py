"""Text conditioning of the DiT (vqdiff/models/dit.py, text_dit.py): the cross-attention against a numpy
brute force, padding that changes nothing, and the jointly trained byte encoder inside TextToImageDiT."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff.models import dit, text
from vqdiff.models.text_dit import TextToImageDiT

TINY = dict(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=0,
            learn_sigma=False)


def _redrawn(shapes, seed=0):
    """Every leaf (zero-initialised ones included) redrawn, so outputs depend on all layers."""
    rng = np.random.default_rng(seed)
    scale = lambda p: 0.3 if p.ndim == 1 else 1 / math.sqrt(p.shape[0])
    return jax.tree.map(lambda p: (scale(p) * rng.standard_normal(p.shape)).astype(np.float32), shapes)


def _text(seed, batch=3, length=6, width=20):
    rng = np.random.default_rng(seed)
    lengths = np.array([2, length, 4])[:batch]
    mask = np.arange(length)[None, :] < lengths[:, None]
    return dict(tokens=rng.standard_normal((batch, length, width)).astype(np.float32), mask=mask,
                pooled=rng.standard_normal((batch, width)).astype(np.float32))


def _latents(seed, batch=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 8, 8, 4)).astype(np.float32),
            rng.integers(0, 1000, batch).astype(np.int32))


def test_cross_attention_matches_numpy():
    rng = np.random.default_rng(1)
    heads, d = 2, 8
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    context = rng.standard_normal((2, 4, d)).astype(np.float32)
    mask = np.array([[True, True, False, False], [True, True, True, True]])
    module = dit.CrossAttention(d, heads)
    params = _redrawn(jax.eval_shape(module.init, jax.random.key(0), x, context, mask)["params"])
    got = np.asarray(module.apply({"params": params}, x, context, mask))

    dense = lambda h, p: h @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)
    q = dense(x, params["query"]).reshape(2, 5, heads, d // heads)
    k, v = np.split(dense(context, params["key_value"]), 2, axis=-1)
    k, v = k.reshape(2, 4, heads, d // heads), v.reshape(2, 4, heads, d // heads)
    logits = np.einsum("bnhd,blhd->bhnl", q, k) / math.sqrt(d // heads)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = dense(np.einsum("bhnl,blhd->bnhd", weights, v).reshape(2, 5, d), params["proj"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_padded_text_positions_change_nothing():
    model = dit.DiT(**TINY)
    x, t = _latents(0)
    text_in = _text(1)
    params = _redrawn(jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, text=text_in))["params"])
    apply = jax.jit(lambda text_in: model.apply({"params": params}, x, t, text=text_in))
    reference = np.asarray(apply(text_in))

    noisy = dict(text_in, tokens=np.where(text_in["mask"][..., None], text_in["tokens"], 1e3))
    np.testing.assert_array_equal(np.asarray(apply(noisy)), reference)
    # The same change at a valid position does change the output (row 0 has 2 valid tokens).
    changed = dict(text_in, tokens=text_in["tokens"].copy())
    changed["tokens"][0, 1] += 1.0
    out = np.asarray(apply(changed))
    assert not np.allclose(out[0], reference[0], atol=1e-4)
    np.testing.assert_array_equal(out[1:], reference[1:])


def test_text_dit_is_zero_at_init_and_reads_the_byte_encoder():
    encoder_config = dict(kind="bytes", max_length=16, width=16, depth=1, num_heads=2, mlp_ratio=2)
    model = TextToImageDiT(dit=dit.DiT(**TINY), text_encoder=text.build_text_encoder(encoder_config))
    token_ids, mask = text.tokenize(["a bag", "an ankle boot", ""], encoder_config)
    byte_text = dict(token_ids=token_ids, mask=mask)
    x, t = _latents(2)
    params = model.init(jax.random.key(0), x, t, byte_text)["params"]
    assert set(params) == {"dit", "text_encoder"}
    np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, x, t, byte_text)), 0.0)

    params = _redrawn(params)
    apply = jax.jit(lambda ids: model.apply({"params": params}, x, t, dict(token_ids=ids, mask=mask)))
    reference = np.asarray(apply(token_ids))
    np.testing.assert_array_equal(np.asarray(apply(np.where(mask, token_ids, 77))), reference)
    swapped = token_ids.copy()
    swapped[1, 2] = swapped[1, 3]            # one valid byte of row 1 changed
    out = np.asarray(apply(swapped))
    assert not np.allclose(out[1], reference[1], atol=1e-4)
    np.testing.assert_array_equal(out[[0, 2]], reference[[0, 2]])
