"""Tests for vqdiff/models/dit.py against closed forms written out here and the paper's table."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff.models import dit

TINY = dict(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def _inputs(seed, batch=3, size=8, channels=4, num_classes=10):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    t = rng.integers(0, 1000, batch)
    y = rng.integers(0, num_classes, batch)
    return jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)


def _random_params(model, x, t, y, seed=0):
    """Params with every leaf (zero-initialised ones included) redrawn, so outputs depend on all layers."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))["params"]
    rng = np.random.default_rng(seed)
    scale = lambda p: 0.3 if p.ndim == 1 else 1 / math.sqrt(p.shape[0])
    draw = lambda p: (scale(p) * rng.standard_normal(p.shape)).astype(np.float32)
    return jax.tree.map(draw, shapes)


def test_sincos_pos_embed_2d_closed_form():
    dim, grid = 16, 3
    quarter = dim // 4
    expected = np.zeros((grid * grid, dim))
    for row in range(grid):
        for col in range(grid):
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                token = row * grid + col
                expected[token, k] = math.sin(col * omega)
                expected[token, quarter + k] = math.cos(col * omega)
                expected[token, 2 * quarter + k] = math.sin(row * omega)
                expected[token, 3 * quarter + k] = math.cos(row * omega)
    got = dit.sincos_pos_embed_2d(dim, grid)
    assert isinstance(got, np.ndarray) and got.shape == (grid * grid, dim)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("freq_shift", [0.0, 1.0])
def test_timestep_embedding_closed_form(freq_shift):
    t = [0, 1, 2.5, 999]
    dim = 9  # odd: one zero column at the end
    half = dim // 2
    expected = np.zeros((len(t), dim))
    for i, step in enumerate(t):
        for k in range(half):
            freq = math.exp(-math.log(10000) * k / (half - freq_shift))
            expected[i, k] = math.cos(step * freq)
            expected[i, half + k] = math.sin(step * freq)
    got = dit.timestep_embedding(jnp.asarray(t), dim, freq_shift=freq_shift)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_patchify_unpatchify(patch_size):
    x = np.random.default_rng(0).standard_normal((2, 8, 12, 3)).astype(np.float32)
    tokens = np.asarray(dit.patchify(jnp.asarray(x), patch_size))
    h, w = 8 // patch_size, 12 // patch_size
    assert tokens.shape == (2, h * w, patch_size ** 2 * 3)
    i, j = h - 1, w // 2
    patch = x[:, i * patch_size:(i + 1) * patch_size, j * patch_size:(j + 1) * patch_size, :]
    np.testing.assert_array_equal(tokens[:, i * w + j], patch.reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(dit.unpatchify(jnp.asarray(tokens), patch_size, (h, w))), x)


def test_output_is_zero_at_init():
    model = dit.DiT(**TINY)
    x, t, y = _inputs(0)
    params = jax.jit(model.init)(jax.random.key(1), x, t, y)["params"]
    out = jax.jit(model.apply)({"params": params}, x, t, y)
    assert out.shape == (3, 8, 8, 8) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    # adaLN-Zero, not dead weights: the layers that are not zero-initialised are random.
    assert np.std(np.asarray(params["blocks_0"]["qkv"]["kernel"])) > 0
    assert np.std(np.asarray(params["y_embedder"]["embedding_table"]["embedding"])) > 0


@pytest.mark.parametrize("learn_sigma, out_channels", [(True, 8), (False, 4)])
def test_output_shape(learn_sigma, out_channels):
    model = dit.DiT(**TINY, learn_sigma=learn_sigma)
    x, t, y = _inputs(0)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, t, y)[0])
    assert out.shape == (3, 8, 8, out_channels) and out.dtype == jnp.float32


def test_label_dropout_prob_one_gives_null_label():
    model = dit.DiT(**TINY, class_dropout_prob=1.0)
    x, t, y = _inputs(2)
    params = {"params": _random_params(model, x, t, y)}
    apply = jax.jit(model.apply, static_argnames="train")
    keep = jnp.zeros_like(y, bool)
    unconditional = apply(params, x, t, jnp.full_like(y, TINY["num_classes"]), force_drop=keep)
    dropped = apply(params, x, t, y, train=True, rngs={"label_dropout": jax.random.key(3)})
    forced = apply(params, x, t, y, force_drop=~keep)
    conditional = apply(params, x, t, y, force_drop=keep)
    np.testing.assert_array_equal(np.asarray(dropped), np.asarray(unconditional))
    np.testing.assert_array_equal(np.asarray(forced), np.asarray(unconditional))
    assert np.abs(np.asarray(conditional - unconditional)).max() > 1e-3
    partly = apply(params, x, t, y, force_drop=jnp.array([False, True, False]))
    np.testing.assert_array_equal(np.asarray(partly[1]), np.asarray(unconditional[1]))
    np.testing.assert_array_equal(np.asarray(partly[0]), np.asarray(conditional[0]))


def test_hyperparameters_match_paper_table():
    table = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    assert len(dit.VARIANTS) == 12
    for size, (depth, hidden, heads) in table.items():
        for patch in (2, 4, 8):
            expected = dict(depth=depth, hidden_size=hidden, patch_size=patch, num_heads=heads)
            assert dit.dit_hyperparameters(f"{size}/{patch}") == expected
            assert dit.dit_hyperparameters(f"DiT-{size}/{patch}") == expected


def test_s2_parameter_count():
    model = dit.DiT(input_size=32, in_channels=4, **dit.dit_hyperparameters("S/2"))
    x, t, y = jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    d, p, c, blocks = 384, 2, 4, 12
    per_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + (d * 6 * d + 6 * d)
    embedders = (p * p * c * d + d) + (256 * d + d) + (d * d + d) + 1001 * d
    final = (d * 2 * d + 2 * d) + (d * p * p * 2 * c + p * p * 2 * c)
    assert count == blocks * per_block + embedders + final == 32_865_056
    # The official 33.0 M also counts its frozen [256, 384] position embedding, a constant here.
    assert round((count + 256 * d) / 1e6, 1) == 33.0


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="XXL/2") as info:
        dit.dit_hyperparameters("XXL/2")
    assert all(name in str(info.value) for name in dit.VARIANTS)


def test_wrong_latent_shape_raises():
    x, t, y = _inputs(0, size=16)
    with pytest.raises(ValueError, match="expects latents"):
        jax.eval_shape(lambda: dit.DiT(**TINY).init(jax.random.key(0), x, t, y))


def test_bfloat16_compute_keeps_float32_params_and_output():
    x, t, y = _inputs(4)
    params = {"params": _random_params(dit.DiT(**TINY), x, t, y)}
    model = dit.DiT(**TINY, dtype=jnp.bfloat16)
    init_shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y))
    assert {leaf.dtype for leaf in jax.tree.leaves(init_shapes)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(model.apply)(params, x, t, y)
    reference = jax.jit(dit.DiT(**TINY).apply)(params, x, t, y)
    assert out.dtype == jnp.float32
    error = np.abs(np.asarray(out - reference)).max() / np.abs(np.asarray(reference)).max()
    assert 0 < error < 5e-2


def test_remat_matches_plain():
    x, t, y = _inputs(5)
    plain, remat = dit.DiT(**TINY), dit.DiT(**TINY, remat=True)
    params = _random_params(plain, x, t, y)
    remat_shapes = jax.eval_shape(lambda: remat.init(jax.random.key(0), x, t, y))["params"]
    assert jax.tree.structure(remat_shapes) == jax.tree.structure(params)

    def loss_and_grad(model):
        loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, t, y)))
        return jax.jit(jax.value_and_grad(loss))(params)

    (loss_plain, grads_plain), (loss_remat, grads_remat) = loss_and_grad(plain), loss_and_grad(remat)
    np.testing.assert_allclose(float(loss_remat), float(loss_plain), rtol=1e-6)
    for g_remat, g_plain in zip(jax.tree.leaves(grads_remat), jax.tree.leaves(grads_plain)):
        np.testing.assert_allclose(np.asarray(g_remat), np.asarray(g_plain), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("first", [0.5, np.nan])
def test_residual_gradient_barrier_is_the_identity_forward_and_backward(first):
    """Both branches of the CPU conditional pass the cotangent through unchanged (a NaN first element
    takes the other branch)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4)), jnp.float32)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4)), jnp.float32).at[0, 0, 0].set(first)
    out, vjp = jax.vjp(dit.residual_gradient_barrier, x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(vjp(cotangent)[0]), np.asarray(cotangent))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda c: vjp(c)[0])(cotangent)), np.asarray(cotangent))


def test_dit_gradients_equal_those_without_the_barrier(monkeypatch):
    x, t, y = _inputs(6)
    model = dit.DiT(**TINY)
    params = _random_params(model, x, t, y)
    loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, t, y)))
    grads = jax.jit(jax.grad(loss))(params)
    monkeypatch.setattr(dit, "residual_gradient_barrier", lambda x: x)
    plain = jax.jit(jax.grad(loss))(params)
    for g, g_plain in zip(jax.tree.leaves(grads), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_plain), rtol=1e-5, atol=1e-7)
