"""GroupNorm from per-channel sums: equal to a float64 numpy GroupNorm and to nn.GroupNorm (values, gradients)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff.models.group_norm import GroupNorm, group_norm


def numpy_group_norm(x, scale, bias, groups, eps):
    b, c = x.shape[0], x.shape[-1]
    g = x.reshape(b, -1, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,groups", [((2, 5, 3, 8), 4), ((3, 4, 4, 6), 6), ((2, 7, 12), 3), ((2, 2, 2, 4), 1)])
def test_values_equal_float64_numpy(shape, groups):
    rng = np.random.default_rng(len(shape) * 10 + groups)
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)                # an offset mean stresses E[x²]−E[x]²
    scale, bias = rng.normal(size=shape[-1]), rng.normal(size=shape[-1])
    got = group_norm(jnp.asarray(x), jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32), groups, 1e-6)
    assert got.shape == x.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, numpy_group_norm(x, scale, bias, groups, 1e-6), rtol=1e-4, atol=1e-4)


def test_module_matches_nn_group_norm_params_values_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 16)), jnp.float32)
    ours, theirs = GroupNorm(num_groups=4, epsilon=1e-6), nn.GroupNorm(num_groups=4, epsilon=1e-6)
    params = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    grads = [jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * cotangent), argnums=(0, 1))(params, x)
             for m in (theirs, ours)]
    for want, have in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_returns_bfloat16_with_float32_statistics():
    x = jnp.asarray(np.random.default_rng(1).normal(100.0, 1.0, size=(2, 4, 4, 8)), jnp.bfloat16)
    y = GroupNorm(num_groups=2, dtype=jnp.bfloat16).init_with_output(jax.random.key(0), x)[0]
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32).std(axis=(1, 2, 3)), 1.0, atol=0.02)


def test_channels_not_divisible_by_groups_is_refused():
    with pytest.raises(ValueError, match="10 channels do not split into num_groups=4"):
        group_norm(jnp.zeros((1, 2, 2, 10)), jnp.ones(10), jnp.zeros(10), 4)
