"""Per-image reconstruction metrics on pixel values in [0, 1]: PSNR and SSIM."""
import jax.numpy as jnp
import numpy as np
from jax import lax


def to_unit_range(x):
    """[-1, 1] → [0, 1], clipped."""
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def crop_padding(images, image_size: int, pad_to: int):
    """Removes the symmetric padding the input pipeline added (pad_to > image_size), so metrics are
    taken at the dataset's native resolution. images: [B, pad_to, pad_to, C] → [B, S, S, C]."""
    if not pad_to or pad_to <= image_size:
        return images
    offset = (pad_to - image_size) // 2
    return images[:, offset:offset + image_size, offset:offset + image_size]


def psnr(x, y, max_value: float = 1.0):
    """Peak signal-to-noise ratio in dB per image. x, y: [B, H, W, C] → [B]."""
    mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
    return 10.0 * jnp.log10(max_value ** 2 / jnp.maximum(mse, 1e-12))


def _gaussian_kernel(size: int, sigma: float):
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (coords / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x, kernel_1d):
    """Separable 'valid' Gaussian filter over H and W of [B, H, W, C], per channel."""
    c = x.shape[-1]
    k = kernel_1d.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    kh = jnp.tile(jnp.asarray(kernel_1d).reshape(k, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(jnp.asarray(kernel_1d).reshape(1, k, 1, 1), (1, 1, 1, c))
    x = lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
    return lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def ssim(x, y, max_value: float = 1.0, filter_size: int = 11, filter_sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03):
    """Structural similarity (Wang et al. 2004) with an 11×11, σ=1.5 Gaussian window, 'valid' borders,
    averaged over positions and channels. x, y: [B, H, W, C] → [B]."""
    x = x.astype(jnp.float32)
    y = y.astype(jnp.float32)
    kernel = _gaussian_kernel(filter_size, filter_sigma)
    c1, c2 = (k1 * max_value) ** 2, (k2 * max_value) ** 2
    mu_x, mu_y = _filter_valid(x, kernel), _filter_valid(y, kernel)
    var_x = _filter_valid(x * x, kernel) - mu_x ** 2
    var_y = _filter_valid(y * y, kernel) - mu_y ** 2
    cov = _filter_valid(x * y, kernel) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return jnp.mean(luminance * contrast_structure, axis=(1, 2, 3))
