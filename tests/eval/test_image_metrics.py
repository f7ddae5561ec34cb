import numpy as np
import pytest

from vqdiff.eval.image_metrics import psnr, ssim, to_unit_range


def test_psnr_matches_closed_form():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.05, size=x.shape), 0, 1).astype(np.float32)
    expected = 10 * np.log10(1.0 / np.mean((x - y) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(np.asarray(psnr(x, y)), expected, rtol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_tensorflow(channels):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(channels)
    x = rng.uniform(size=(4, 28, 28, channels)).astype(np.float32)
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1).astype(np.float32)
    expected = tf.image.ssim(tf.constant(x), tf.constant(y), max_val=1.0).numpy()
    np.testing.assert_allclose(np.asarray(ssim(x, y)), expected, rtol=1e-4, atol=1e-5)


def test_ssim_of_identical_images_is_one_and_psnr_large():
    x = np.random.default_rng(1).uniform(size=(2, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ssim(x, x)), 1.0, rtol=1e-5)
    assert np.all(np.asarray(psnr(x, x)) > 100)


def test_to_unit_range_maps_and_clips():
    np.testing.assert_allclose(np.asarray(to_unit_range(np.array([-1.5, -1.0, 0.0, 1.0, 2.0]))),
                               [0.0, 0.0, 0.5, 1.0, 1.0])
