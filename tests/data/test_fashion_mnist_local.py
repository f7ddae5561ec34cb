"""vqdiff/data/fashion_mnist_local.py: prepared offline from a fake Debian folder (conftest.py)."""
import gzip
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.data import fashion_mnist_local, idx

SPLITS = ("train", "test")


def _examples_by_image(dataset) -> dict[bytes, int]:
    """Image bytes → label: TFDS shuffles examples when writing, so compare as a mapping."""
    return {ex["image"].tobytes(): int(ex["label"]) for ex in tfds.as_numpy(dataset)}


def test_info(fake_fashion_mnist_data_dir):
    builder = tfds.builder("fashion_mnist_local", data_dir=fake_fashion_mnist_data_dir)
    assert builder.is_prepared() and str(builder.version) == "1.0.0"
    assert builder.info.features["image"].shape == (28, 28, 1)
    assert builder.info.features["image"].np_dtype == np.uint8
    assert builder.info.features["label"].names == list(fashion_mnist_local.CLASS_NAMES)
    assert {s: builder.info.splits[s].num_examples for s in SPLITS} == {"train": 20, "test": 10}


def test_examples_round_trip_exactly(fake_fashion_mnist, fake_fashion_mnist_data_dir):
    _, arrays = fake_fashion_mnist
    builder = tfds.builder("fashion_mnist_local", data_dir=fake_fashion_mnist_data_dir)
    for split in SPLITS:
        images, labels = arrays[split]
        expected = {image[:, :, None].tobytes(): int(label) for image, label in zip(images, labels)}
        found = _examples_by_image(builder.as_dataset(split=split))
        assert len(expected) == len(images)  # Random images: no duplicates hide a loss.
        assert found == expected


def test_folder_from_environment(tmp_path, monkeypatch, fake_fashion_mnist):
    monkeypatch.setenv(fashion_mnist_local.SOURCE_DIR_ENV, str(fake_fashion_mnist[0]))
    builder = tfds.builder("fashion_mnist_local", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["test"].num_examples == 10


def test_missing_folder_names_both_fixes(tmp_path):
    builder = tfds.builder(
        "fashion_mnist_local", data_dir=str(tmp_path / "tfds"), source_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError) as error:
        builder.download_and_prepare()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "config.data.dataset='fashion_mnist'" in message
    assert str(tmp_path / "none") in message


def test_label_count_mismatch_raises(tmp_path, encode_idx, fake_fashion_mnist):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in os.listdir(fake_fashion_mnist[0]):
        (folder / name).write_bytes((fake_fashion_mnist[0] / name).read_bytes())
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(encode_idx(np.zeros(9, np.uint8))))
    with pytest.raises(ValueError, match="10 images but .* 9 labels"):
        fashion_mnist_local.read_split(str(folder), "test")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(fashion_mnist_local.DEFAULT_SOURCE_DIR),
                    reason="needs Debian's dataset-fashion-mnist")
def test_real_debian_files(tmp_path):
    """Prepares the real 70k examples (about a minute on 2 cores)."""
    builder = tfds.builder("fashion_mnist_local", data_dir=str(tmp_path),
                           source_dir=fashion_mnist_local.DEFAULT_SOURCE_DIR)
    builder.download_and_prepare()
    assert {s: builder.info.splits[s].num_examples for s in SPLITS} == {
        "train": 60000, "test": 10000}
    folder = fashion_mnist_local.DEFAULT_SOURCE_DIR
    images = idx.read_images(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))
    labels = idx.read_labels(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    found = _examples_by_image(builder.as_dataset(split="test"))
    assert found[images[0][:, :, None].tobytes()] == labels[0]
    np.testing.assert_array_equal(
        np.bincount(list(found.values()), minlength=10), np.bincount(labels, minlength=10))
