"""Tests for vqdiff/models/quantizer.py against numpy brute force and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vqdiff.models import quantizer as vq


def _normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _numpy_nearest(z, codebook):
    difference = z[:, None, :].astype(np.float64) - codebook[None].astype(np.float64)
    return (difference ** 2).sum(-1).argmin(-1)


def _numpy_ema(cluster_size, embed_sum, z, indices, decay, epsilon, mask):
    num_codes = cluster_size.shape[0]
    counts = np.zeros(num_codes)
    sums = np.zeros(embed_sum.shape)
    for row, code, weight in zip(z, indices, mask):
        counts[code] += weight
        sums[code] += weight * row
    new_cluster_size = decay * cluster_size + (1 - decay) * counts
    new_embed_sum = decay * embed_sum + (1 - decay) * sums
    n = new_cluster_size.sum()
    smoothed = (new_cluster_size + epsilon) / (n + num_codes * epsilon) * n
    return new_cluster_size, new_embed_sum, new_embed_sum / smoothed[:, None]


def _numpy_metrics(indices, num_codes, weights=None):
    indices = np.asarray(indices).reshape(-1)
    weights = np.ones(indices.shape) if weights is None else np.asarray(weights).reshape(-1)
    counts = np.bincount(indices, weights=weights, minlength=num_codes)
    probs = counts[counts > 0] / counts.sum()
    return np.exp(-(probs * np.log(probs)).sum()), (counts > 0).sum()


def test_squared_distances_match_numpy():
    z, codebook = _normal(0, 7, 5), _normal(1, 11, 5)
    expected = ((z[:, None, :] - codebook[None]) ** 2).sum(-1)
    np.testing.assert_allclose(vq.squared_distances(z, codebook), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 8, 37, 8192])
def test_nearest_code_indices_match_brute_force(chunk_size):
    z, codebook = _normal(2, 37, 4), _normal(3, 11, 4)
    indices = vq.nearest_code_indices(jnp.asarray(z), jnp.asarray(codebook), chunk_size=chunk_size)
    assert indices.shape == (37,) and indices.dtype == jnp.int32
    np.testing.assert_array_equal(indices, _numpy_nearest(z, codebook))


def test_straight_through_forward_is_z_q_and_gradient_passes_to_z():
    z, z_q, weights = _normal(4, 6, 3), _normal(5, 6, 3), _normal(6, 6, 3)

    def downstream(x):
        return jnp.sum(jnp.sin(x) * weights)

    np.testing.assert_allclose(vq.straight_through(z, z_q), z_q, atol=1e-6)
    grad_z, grad_z_q = jax.grad(lambda a, b: downstream(vq.straight_through(a, b)), (0, 1))(z, z_q)
    np.testing.assert_allclose(grad_z, jax.grad(downstream)(z_q), rtol=1e-6)
    np.testing.assert_array_equal(grad_z_q, 0.0)


def test_vq_losses_closed_form_and_gradients():
    z, z_q = _normal(7, 4, 2, 3), _normal(8, 4, 2, 3)
    codebook_loss, commitment_loss = vq.vq_losses(z, z_q)
    expected = np.mean((z - z_q) ** 2)
    assert codebook_loss.dtype == commitment_loss.dtype == jnp.float32
    np.testing.assert_allclose(codebook_loss, expected, rtol=1e-6)
    np.testing.assert_allclose(commitment_loss, expected, rtol=1e-6)

    codebook_grads = jax.grad(lambda a, b: vq.vq_losses(a, b)[0], (0, 1))(z, z_q)
    commitment_grads = jax.grad(lambda a, b: vq.vq_losses(a, b)[1], (0, 1))(z, z_q)
    np.testing.assert_array_equal(codebook_grads[0], 0.0)
    np.testing.assert_allclose(codebook_grads[1], 2 * (z_q - z) / z.size, rtol=1e-5)
    np.testing.assert_allclose(commitment_grads[0], 2 * (z - z_q) / z.size, rtol=1e-5)
    np.testing.assert_array_equal(commitment_grads[1], 0.0)


def test_ema_update_matches_closed_form_and_ignores_masked_rows():
    num_codes, decay, epsilon = 5, 0.9, 1e-3
    rng = np.random.default_rng(9)
    cluster_size = rng.uniform(0.0, 3.0, num_codes).astype(np.float32)
    embed_sum = _normal(10, num_codes, 3)
    z = _normal(11, 8, 3)
    indices = np.array([0, 0, 1, 3, 3, 3, 4, 1], np.int32)
    mask = np.array([1, 1, 1, 1, 0, 1, 0, 1], np.float32)

    unmasked = vq.ema_codebook_update(cluster_size, embed_sum, z, indices, decay=decay,
                                      epsilon=epsilon)
    for got, want in zip(unmasked, _numpy_ema(cluster_size, embed_sum, z, indices, decay, epsilon,
                                              np.ones(8))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    z_garbage = z.copy()
    z_garbage[mask == 0] = 1e6
    masked = vq.ema_codebook_update(cluster_size, embed_sum, z_garbage, indices, decay=decay,
                                    epsilon=epsilon, mask=mask)
    real = mask == 1
    only_real = vq.ema_codebook_update(cluster_size, embed_sum, z[real], indices[real],
                                       decay=decay, epsilon=epsilon)
    for got, want, reference in zip(
            masked, _numpy_ema(cluster_size, embed_sum, z, indices, decay, epsilon, mask),
            only_real):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-7)


def test_restart_replaces_exactly_the_dead_codes_with_rows_of_z():
    codebook, embed_sum = _normal(12, 8, 3), _normal(13, 8, 3)
    cluster_size = np.array([0.0, 2.0, 0.4, 0.5, 7.0, 0.49, 0.5001, 1.0], np.float32)
    z = _normal(14, 6, 3)
    mask = np.array([1, 0, 1, 0, 1, 1], np.float32)
    dead = cluster_size < 0.5

    new_codebook, new_cluster_size, new_embed_sum = jax.jit(
        vq.restart_dead_codes, static_argnames="threshold")(
            codebook, cluster_size, embed_sum, z, jax.random.key(0), threshold=0.5, mask=mask)
    new_codebook, new_embed_sum = np.asarray(new_codebook), np.asarray(new_embed_sum)

    np.testing.assert_array_equal(new_codebook[~dead], codebook[~dead])
    np.testing.assert_array_equal(new_embed_sum[~dead], embed_sum[~dead])
    np.testing.assert_array_equal(np.asarray(new_cluster_size)[~dead], cluster_size[~dead])
    np.testing.assert_array_equal(np.asarray(new_cluster_size)[dead], 1.0)
    np.testing.assert_array_equal(new_embed_sum[dead], new_codebook[dead])
    real_rows = z[mask == 1]
    for code in new_codebook[dead]:
        assert (real_rows == code).all(-1).any(), "a restarted code is not a real row of z"


def test_codebook_metrics_match_numpy_histogram():
    indices = jnp.array([[0, 0, 1], [2, 2, 2], [2, 5, 7]], jnp.int32)
    metrics = vq.codebook_metrics(indices, num_codes=8)
    perplexity, codes_used = _numpy_metrics(indices, 8)
    assert metrics["perplexity"].dtype == metrics["codes_used"].dtype == jnp.float32
    np.testing.assert_allclose(metrics["perplexity"], perplexity, rtol=1e-5)
    assert metrics["codes_used"] == codes_used == 5

    mask = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], np.float32)
    masked = vq.codebook_metrics(indices, num_codes=8, mask=mask)
    perplexity, codes_used = _numpy_metrics(indices, 8, mask)
    np.testing.assert_allclose(masked["perplexity"], perplexity, rtol=1e-5)
    assert masked["codes_used"] == codes_used == 3


def test_module_ema_updates_stats_only_when_training_and_mutable():
    model = vq.VectorQuantizer(num_codes=6, embedding_dim=3, use_ema=True, ema_decay=0.9,
                               ema_epsilon=1e-3, beta=0.5)
    z = jnp.asarray(_normal(15, 2, 2, 2, 3))
    mask = np.array([1.0, 0.0], np.float32)
    variables = model.init(jax.random.key(1), z, train=True)
    assert "params" not in variables
    stats = variables["quantizer_stats"]
    np.testing.assert_array_equal(stats["embed_sum"], stats["codebook"])
    np.testing.assert_array_equal(stats["cluster_size"], 1.0)

    (z_q, aux), updates = model.apply(variables, z, train=True, mask=mask,
                                      mutable=["quantizer_stats"])
    flat_z = np.asarray(z).reshape(-1, 3)
    indices = np.asarray(aux["indices"]).reshape(-1)
    np.testing.assert_array_equal(indices, _numpy_nearest(flat_z, np.asarray(stats["codebook"])))
    row_mask = np.repeat(mask, 4)
    expected = _numpy_ema(np.asarray(stats["cluster_size"]), np.asarray(stats["embed_sum"]), flat_z,
                          indices, 0.9, 1e-3, row_mask)
    new_stats = updates["quantizer_stats"]
    for name, want in zip(["cluster_size", "embed_sum", "codebook"], expected):
        np.testing.assert_allclose(new_stats[name], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["loss"], 0.5 * aux["commitment_loss"], rtol=1e-6)
    perplexity, codes_used = _numpy_metrics(indices, 6, row_mask)
    np.testing.assert_allclose(aux["perplexity"], perplexity, rtol=1e-5)
    assert aux["codes_used"] == codes_used

    (_, _), eval_updates = model.apply(variables, z, train=False, mutable=["quantizer_stats"])
    (z_q_immutable, _) = model.apply(variables, z, train=True)
    for name in ["cluster_size", "embed_sum", "codebook"]:
        np.testing.assert_array_equal(eval_updates["quantizer_stats"][name], stats[name])
    np.testing.assert_array_equal(z_q_immutable, z_q)


def test_module_codebook_param_and_loss_without_ema():
    model = vq.VectorQuantizer(num_codes=5, embedding_dim=3, beta=0.25)
    z = jnp.asarray(_normal(16, 2, 3, 3))
    variables = model.init(jax.random.key(2), z, train=True)
    assert set(variables) == {"params"}
    codebook = np.asarray(variables["params"]["codebook"])
    assert codebook.shape == (5, 3)

    z_q, aux = model.apply(variables, z, train=True)
    expected_z_q = codebook[_numpy_nearest(np.asarray(z).reshape(-1, 3), codebook)].reshape(z.shape)
    np.testing.assert_allclose(z_q, expected_z_q, atol=1e-6)
    np.testing.assert_allclose(aux["loss"], aux["codebook_loss"] + 0.25 * aux["commitment_loss"],
                               rtol=1e-6)
    codebook_grad = jax.grad(lambda v: model.apply(v, z, train=True)[1]["loss"])(variables)
    assert np.abs(codebook_grad["params"]["codebook"]).sum() > 0


def test_factorised_l2_lookup_round_trips_through_indices():
    model = vq.VectorQuantizer(num_codes=7, embedding_dim=6, lookup_dim=3, l2_normalize_codes=True,
                               lookup_chunk_size=4)
    z = jnp.asarray(_normal(17, 2, 3, 3, 6))
    variables = model.init(jax.random.key(3), z, train=True)
    assert variables["params"]["codebook"].shape == (7, 3)
    z_q, aux = model.apply(variables, z, train=True)
    assert z_q.shape == z.shape
    assert aux["indices"].shape == (2, 3, 3) and aux["indices"].dtype == jnp.int32

    indices = model.apply(variables, z, method=vq.VectorQuantizer.encode_indices)
    np.testing.assert_array_equal(indices, aux["indices"])
    embedded = model.apply(variables, indices, method=vq.VectorQuantizer.embed_indices)
    np.testing.assert_allclose(embedded, z_q, atol=1e-5)


def test_l2_normalised_codes_have_unit_norm_and_losses_use_them():
    model = vq.VectorQuantizer(num_codes=5, embedding_dim=4, l2_normalize_codes=True)
    z = jnp.asarray(3.0 * _normal(18, 10, 4))
    variables = model.init(jax.random.key(4), z, train=True)
    z_q, aux = model.apply(variables, z, train=True)
    np.testing.assert_allclose(np.linalg.norm(z_q, axis=-1), 1.0, rtol=1e-5)
    unit_z = np.asarray(z) / np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(aux["commitment_loss"], np.mean((unit_z - np.asarray(z_q)) ** 2),
                               rtol=1e-5)


def test_training_step_is_identical_on_8_replicas_and_on_1_device():
    assert len(jax.devices()) >= 8, "tests/conftest.py should provide 8 CPU devices"
    model = vq.VectorQuantizer(num_codes=16, embedding_dim=4, lookup_dim=3, use_ema=True,
                               ema_decay=0.99, dead_code_threshold=0.995, lookup_chunk_size=8)
    z = jnp.asarray(_normal(19, 16, 2, 2, 4))
    mask = jnp.asarray(np.r_[np.ones(13), np.zeros(3)].astype(np.float32))
    variables = model.init(jax.random.key(5), z, train=True)

    @jax.jit
    def train_step(variables, z, mask, rng):
        (_, aux), updates = model.apply(variables, z, train=True, mask=mask,
                                        rngs={"quantizer": rng}, mutable=["quantizer_stats"])
        return updates["quantizer_stats"], aux["indices"]

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    rng = jax.random.key(6)
    sharded_stats, sharded_indices = train_step(
        jax.device_put(variables, replicated), jax.device_put(z, batch),
        jax.device_put(mask, batch), jax.device_put(rng, replicated))
    device = jax.devices()[0]
    single_stats, indices = train_step(
        jax.device_put(variables, device), jax.device_put(z, device),
        jax.device_put(mask, device), jax.device_put(rng, device))

    # Initial cluster_size is 1: after one step of decay 0.99 a code with no real row sits at 0.99.
    counts = np.bincount(np.asarray(indices)[:13].reshape(-1), minlength=16)
    unused = counts == 0
    assert 0 < unused.sum() < 16, "the test should exercise both restarted and kept codes"
    np.testing.assert_array_equal(np.asarray(single_stats["cluster_size"])[unused], 1.0)
    np.testing.assert_array_equal(sharded_indices, indices)
    for name in ["codebook", "cluster_size", "embed_sum"]:
        sharded = sharded_stats[name]
        assert sharded.sharding.is_fully_replicated
        shards = [np.asarray(shard.data) for shard in sharded.addressable_shards]
        assert len(shards) == 8
        for shard in shards[1:]:
            np.testing.assert_array_equal(shard, shards[0])
        np.testing.assert_allclose(shards[0], single_stats[name], rtol=1e-5, atol=1e-6)
