"""Fixtures for the data tests: IDX bytes written by hand, and a tiny fake Debian Fashion-MNIST folder."""
import gzip
import struct

import numpy as np
import pytest

# numpy dtype → IDX element type code.
_TYPE_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
               np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}

FAKE_SIZES = {"train": 20, "test": 10}
FAKE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of `array`, built from the format's description with struct."""
    header = struct.pack(">BBBB", 0, 0, _TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fake_fashion_mnist(folder, seed: int = 0) -> dict:
    """Writes Debian's four gzip IDX files with random content; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in FAKE_SIZES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        for name, array in zip(FAKE_FILES[split], (images, labels)):
            (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory):
    """(folder, {split: (images [N, 28, 28] uint8, labels [N] uint8)}) of a 20/10 fake dataset."""
    folder = tmp_path_factory.mktemp("fake_fashion_mnist")
    return folder, write_fake_fashion_mnist(folder)


@pytest.fixture(scope="session")
def fake_fashion_mnist_data_dir(tmp_path_factory, fake_fashion_mnist):
    """A TFDS data_dir holding `fashion_mnist_local` prepared from the fake folder."""
    import tensorflow_datasets as tfds

    from vqdiff.data import fashion_mnist_local  # noqa: F401  Registers the builder.

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds.builder(
        "fashion_mnist_local", data_dir=data_dir, source_dir=str(fake_fashion_mnist[0]))
    builder.download_and_prepare()
    return data_dir


@pytest.fixture
def encode_idx():
    """`idx_bytes`, for tests that write their own IDX files."""
    return idx_bytes
