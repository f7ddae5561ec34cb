"""FID reference of a config's eval split: its first N images at native resolution, and their cached
Inception statistics (shared by the tokenizer's rFID and the DiT's FID)."""
import numpy as np

from vqdiff.data import pipeline
from vqdiff.eval import fid
from vqdiff.eval.image_metrics import crop_padding, to_unit_range
from vqdiff.train import sharding


def to_uint8_native(images, data_config) -> np.ndarray:
    """Model-space images [N, H, W, C] in [-1, 1] → uint8 [N, image_size, image_size, C], padding cropped."""
    x = np.asarray(sharding.to_host(images), np.float32)   # gathered: also across processes
    x = np.asarray(crop_padding(x, data_config.image_size, data_config.pad_to))
    return np.round(np.clip(np.asarray(to_unit_range(x)), 0.0, 1.0) * 255.0).astype(np.uint8)


def eval_images(config, num_images: int, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_images` images of the eval split (uint8, native resolution) and their labels."""
    images, labels, count = [], [], 0
    batches = pipeline.create_dataset(config.data, split=config.data.eval_split, train=False,
                                      global_batch_size=batch_size, seed=config.seed)
    for batch in batches:
        keep = np.asarray(batch["mask"]) > 0
        images.append(to_uint8_native(batch["image"][keep], config.data))
        labels.append(np.asarray(batch["label"])[keep])
        count += int(keep.sum())
        if count >= num_images:
            break
    images, labels = np.concatenate(images)[:num_images], np.concatenate(labels)[:num_images]
    if len(images) < num_images:
        raise ValueError(f"config.data.eval_split={config.data.eval_split!r} has {len(images)} images, "
                         f"fewer than the {num_images} asked for FID; lower the eval image count")
    return images, labels


def reference_key(config, num_images: int) -> str:
    d = config.data
    return f"{d.dataset}/{d.eval_split}/{d.image_size}px/c{d.channels}/first{num_images}"


def reference_statistics(config, num_images: int, mesh=None) -> dict:
    """Inception statistics (mu, sigma, features) of the first `num_images` eval images, cached on disk
    under the dataset, split, resolution and count, so only the first evaluation pays for them."""
    return fid.cached_reference_statistics(
        reference_key(config, num_images), lambda: eval_images(config, num_images)[0], mesh=mesh)


def fid_against_reference(reference: dict, images: np.ndarray, mesh=None) -> dict:
    """FID, precision and recall of uint8 `images` against a `reference_statistics` dict."""
    features = fid.inception_features(images, mesh=mesh)
    value = fid.frechet_distance(reference["mu"], reference["sigma"], *fid.feature_statistics(features))
    precision, recall = fid.precision_recall(reference["features"], features)
    return dict(fid=value, precision=precision, recall=recall)
