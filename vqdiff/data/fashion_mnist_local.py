"""Fashion-MNIST as the TFDS dataset `fashion_mnist_local`, built offline from local IDX files.

Debian's `dataset-fashion-mnist` installs the four gzip IDX files of Zalando's release in
/usr/share/datasets/fashion-mnist/. This builder turns them into a TFDS dataset (splits `train`,
60k, and `test`, 10k) with no network access, so the pipeline reads it like any other TFDS name.
Importing this module registers the builder:

    from vqdiff.data import fashion_mnist_local
    builder = tfds.builder('fashion_mnist_local', data_dir=...)
    builder.download_and_prepare()

The folder is, in order of precedence: the builder argument `source_dir`, the environment variable
VQDIFF_FASHION_MNIST_DIR, /usr/share/datasets/fashion-mnist.
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from vqdiff.data import idx

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_DIR_ENV = "VQDIFF_FASHION_MNIST_DIR"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# split -> (images file, labels file), the names of Zalando's release.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def source_dir(override: str | None = None) -> str:
    """The folder holding the IDX files: `override`, else $VQDIFF_FASHION_MNIST_DIR, else Debian's."""
    return override or os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIR


def read_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 28, 28]` uint8 and labels `[N]` uint8 of one split, checked against each other."""
    images_path, labels_path = (os.path.join(folder, name) for name in SPLIT_FILES[split])
    missing = [p for p in (images_path, labels_path) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Either install them "
            f"(`apt-get install dataset-fashion-mnist`, or point ${SOURCE_DIR_ENV} at a folder "
            "holding them), or set config.data.dataset='fashion_mnist' to use TFDS's own builder "
            "(downloads, needs internet)."
        )
    images = idx.read_images(images_path)
    labels = idx.read_labels(labels_path)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images of size {images.shape[1:]}, expected (28, 28).")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels."
        )
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path}: label {labels.max()} outside [0, {len(CLASS_NAMES)}).")
    return images, labels


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST from local IDX files; no download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from the IDX files of Debian's dataset-fashion-mnist."}

    def __init__(self, *, source_dir: str | None = None, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST: 28x28 grayscale images of 10 kinds of clothing.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        folder = source_dir(self._source_dir)
        # Read every split before writing any, so a missing or corrupt file fails fast.
        arrays = {split: read_split(folder, split) for split in SPLIT_FILES}
        return {split: self._generate_examples(*arrays[split]) for split in SPLIT_FILES}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image[:, :, None], "label": int(label)}
