"""vqdiff/data/idx.py against IDX bytes written by hand (see conftest.idx_bytes)."""
import gzip
import os

import numpy as np
import pytest

from vqdiff.data import idx

REAL_DIR = "/usr/share/datasets/fashion-mnist"


def test_images_and_labels_round_trip(tmp_path, encode_idx):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (5,), dtype=np.uint8)
    image_bytes, label_bytes = encode_idx(images), encode_idx(labels)
    assert len(image_bytes) - images.size == 16 and len(label_bytes) - labels.size == 8
    (tmp_path / "images.gz").write_bytes(gzip.compress(image_bytes))
    (tmp_path / "labels").write_bytes(label_bytes)

    read_images = idx.read_images(tmp_path / "images.gz")
    read_labels = idx.read_labels(tmp_path / "labels")
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.dtype == np.uint8 and read_labels.dtype == np.uint8


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_other_element_types_parse_big_endian(encode_idx, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    parsed = idx.parse_idx(encode_idx(array))
    np.testing.assert_array_equal(parsed, array)
    assert parsed.dtype == np.dtype(dtype) and parsed.dtype.isnative


def test_wrong_magic_names_both_numbers(encode_idx):
    labels = np.zeros(4, np.uint8)
    with pytest.raises(ValueError, match="0x00000801, expected 0x00000803"):
        idx.parse_idx(encode_idx(labels), magic=idx.IMAGES_MAGIC)


@pytest.mark.parametrize("corrupt", [
    lambda b: b"\x01" + b[1:],        # Non-zero leading byte.
    lambda b: b[:2] + b"\x42" + b[3:],  # Unknown element type.
    lambda b: b[:10],                  # Header cut short.
    lambda b: b[:2],                   # Not even a magic number.
], ids=["leading_byte", "element_type", "short_header", "two_bytes"])
def test_corrupt_header_raises(encode_idx, corrupt):
    data = corrupt(encode_idx(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match="IDX"):
        idx.parse_idx(data, source="images.idx")


@pytest.mark.parametrize("delta", [-1, 1])
def test_count_disagreeing_with_payload_raises(encode_idx, delta):
    data = encode_idx(np.zeros((3, 28, 28), np.uint8))
    data = data[:delta] if delta < 0 else data + b"\x00"
    with pytest.raises(ValueError, match=r"shape \(3, 28, 28\)"):
        idx.parse_idx(data, magic=idx.IMAGES_MAGIC)


def test_truncated_gzip_raises(tmp_path, encode_idx):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="gzip"):
        idx.read_labels(path)


@pytest.mark.skipif(not os.path.isdir(REAL_DIR), reason="needs Debian's dataset-fashion-mnist")
def test_real_fashion_mnist_files():
    for prefix, n in [("train", 60000), ("t10k", 10000)]:
        labels_path = os.path.join(REAL_DIR, f"{prefix}-labels-idx1-ubyte.gz")
        labels = idx.read_labels(labels_path)
        assert labels.shape == (n,) and labels.max() == 9
        with gzip.open(labels_path) as f:
            raw = f.read()
        assert int.from_bytes(raw[4:8], "big") == n and labels[0] == raw[8]
    images = idx.read_images(os.path.join(REAL_DIR, "t10k-images-idx3-ubyte.gz"))
    assert images.shape == (10000, 28, 28)
