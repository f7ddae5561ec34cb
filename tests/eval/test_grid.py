import numpy as np
from PIL import Image

from vqdiff.eval.grid import make_grid, save_grid, to_uint8


def test_to_uint8_maps_range_endpoints():
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 1.0, 3.0])), [0, 128, 255, 255])


def test_grid_places_each_image_in_its_cell():
    images = np.stack([np.full((4, 5, 1), i * 40, np.uint8) for i in range(5)])
    grid = make_grid(images, num_columns=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 1)
    for i in range(5):
        r, c = divmod(i, 3)
        cell = grid[1 + r * 5: 1 + r * 5 + 4, 1 + c * 6: 1 + c * 6 + 5]
        assert np.all(cell == i * 40)
    assert np.all(grid[6:10, 13:18] == 0)   # the missing sixth cell stays black


def test_save_grid_writes_scaled_png(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, size=(4, 6, 6, 3)).astype(np.float32)
    path = save_grid(images, str(tmp_path / "g" / "grid.png"), num_columns=2, scale=2)
    saved = np.asarray(Image.open(path))
    np.testing.assert_array_equal(saved, make_grid(images, 2).repeat(2, 0).repeat(2, 1))
