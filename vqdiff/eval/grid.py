"""Image grids as PNG files, for looking at reconstructions and samples."""
import os

import einops
import jax
import numpy as np
from PIL import Image


def to_uint8(images):
    """Float images in [-1, 1] (or uint8 already) → uint8 [0, 255]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images, num_columns: int, padding: int = 2):
    """[N, H, W, C] → one uint8 [rows·(H+p)+p, cols·(W+p)+p, C] mosaic; missing cells stay black."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    num_rows = -(-n // num_columns)
    cells = np.zeros((num_rows * num_columns, h + padding, w + padding, c), np.uint8)
    cells[:n, padding:, padding:] = images
    grid = einops.rearrange(cells, "(r k) h w c -> (r h) (k w) c", k=num_columns)
    return np.pad(grid, ((0, padding), (0, padding), (0, 0)))


def save_grid(images, path: str, num_columns: int, scale: int = 1):
    """Writes `images` [N, H, W, C] as a PNG grid, each pixel repeated `scale` times. In a multi-process
    run only process 0 writes (the others return the same path)."""
    if jax.process_index() != 0:
        return path
    grid = make_grid(images, num_columns)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
