"""FID (Heusel et al. 2017) and precision/recall (Kynkäänniemi et al. 2019) on TF-FID Inception features.

Features come from `vqdiff.models.inception` in jitted batches, sharded over the 'data' axis of a mesh
when one is given. Statistics are float64; the Fréchet distance takes its matrix square root through
symmetric eigendecompositions, which stay real and stable where `sqrtm` of a covariance product does not.
Inception Score is not offered: the available weights have no classifier head.

    python -m vqdiff.eval.fid A B

A and B are each an `.npz` holding uint8 images [N, H, W, C] under the key `images`, or a folder of
image files; A is the reference for precision and recall. Prints one JSON line:
{"fid": ..., "precision": ..., "recall": ..., "n_a": ..., "n_b": ...}.
Runtime: 2.5–3.5 images/s on 2 shared CPU cores (2,000 images: 10–13 min); use a GPU/TPU for 50k.
"""
import argparse
import functools
import hashlib
import json
import pathlib
import re
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vqdiff import compiler_options, weights
from vqdiff.models import inception

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@functools.lru_cache(maxsize=4)
def _inception_params(weights_file: str, mesh: Mesh | None) -> dict:
    """Pretrained params, replicated over `mesh` when given; cached per weights file and mesh."""
    del weights_file  # Part of the cache key only: load_inception reads the same path.
    _, params = inception.load_inception()
    if mesh is not None:
        params = jax.device_put(params, NamedSharding(mesh, P()))
    return params


# On XLA:CPU the network runs 1.3–1.6× faster a few images at a time than on a whole batch at once (its
# 147-pixel stem activations then stay in cache); measured on 2 shared cores, chunks of 1 and 2 alike.
CPU_CHUNK = 2


def _chunk_size(mesh: Mesh | None) -> int | None:
    """Images per network call inside a batch: CPU_CHUNK on one CPU device, else the whole batch (None)."""
    single_device = mesh is None or mesh.size == 1
    return CPU_CHUNK if jax.default_backend() == "cpu" and single_device else None


def _pool3(params: dict, images: jax.Array, chunk: int | None = None) -> jax.Array:
    """uint8 images [B, H, W, C] → pool3 [B, 2048], `chunk` images at a time (B a multiple of it)."""
    def features(x):
        return inception.InceptionV3().apply({"params": params}, inception.preprocess(x))

    if chunk is None or chunk >= len(images):
        return features(images)
    pooled = lax.map(features, images.reshape(-1, chunk, *images.shape[1:]))
    return pooled.reshape(len(images), inception.FEATURE_DIM)


@functools.cache
def _jitted_pool3():
    # Built on first use: choosing compiler options asks for the backend, which must not start at import
    # (jax.distributed.initialize comes first in a multi-process run).
    return compiler_options.jit(_pool3, "convolutional", static_argnames="chunk")


def _chunks(images: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    arrays = [images] if isinstance(images, np.ndarray) else images
    for array in arrays:
        array = np.asarray(array)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 images [N, H, W, 1 or 3], got {array.dtype} {array.shape}")
        for start in range(0, len(array), batch_size):
            yield array[start:start + batch_size]


def inception_features(
    images: np.ndarray | Iterable[np.ndarray], *, batch_size: int = 50, mesh: Mesh | None = None
) -> np.ndarray:
    """uint8 images [N, H, W, C], C = 1 or 3 (or an iterable of such arrays) → pool3 features [N, 2048].

    Images are resized to 299×299 as TF-FID does. Every call of the network sees `batch_size` images
    (the last batch is zero-padded, so the default divides 1,000, 10,000 and 50,000; an array of fewer
    images is one batch of its own size), and it compiles once per input resolution and batch size. On
    one CPU device a batch goes through the network CPU_CHUNK images at a time, and `batch_size` is
    rounded up to a multiple of that. With `mesh`, each batch is split over its 'data' axis;
    `batch_size` is rounded up to a multiple of that axis.
    """
    chunk = _chunk_size(mesh)
    if isinstance(images, np.ndarray) and 0 < len(images) < batch_size:
        batch_size = len(images)   # fewer images than one batch: no padding to compute through
    if chunk is not None:
        batch_size = -(-batch_size // chunk) * chunk
    if mesh is not None:
        shards = mesh.shape["data"]
        batch_size = -(-batch_size // shards) * shards
        batch_sharding = NamedSharding(mesh, P("data"))
    params = _inception_params(str(weights.weights_path(inception.WEIGHTS_NAME)), mesh)
    features, pending = [], None
    for batch in _chunks(images, batch_size):
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]), np.uint8)])
        batch = jax.device_put(batch, batch_sharding) if mesh is not None else jnp.asarray(batch)
        # Fetch the previous batch only after dispatching this one, so the host and device overlap.
        current = (_jitted_pool3()(params, batch, chunk=chunk), count)
        if pending is not None:
            features.append(np.asarray(pending[0])[:pending[1]])
        pending = current
    if pending is not None:
        features.append(np.asarray(pending[0])[:pending[1]])
    if not features:
        return np.zeros((0, inception.FEATURE_DIM), np.float32)
    return np.concatenate(features)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D], N ≥ 2 → (mean [D], covariance [D, D]), both float64 (unbiased covariance)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need features [N ≥ 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; rounding's negative eigenvalues → 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)

    tr((sigma1 sigma2)^½) equals tr((s sigma2 s)^½) with s = sigma1^½, a symmetric PSD matrix whose
    eigenvalues are real and non-negative, so no complex parts or ill-conditioned `sqrtm` are involved.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    trace_sqrt_product = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product
    return max(float(distance), 0.0)


@jax.jit
def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """a [M, D], b [N, D] → squared Euclidean distances [M, N]."""
    cross = jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST)
    squared = jnp.sum(a**2, axis=1)[:, None] + jnp.sum(b**2, axis=1)[None, :] - 2.0 * cross
    return jnp.maximum(squared, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_neighbour(rows: jax.Array, points: jax.Array, k: int) -> jax.Array:
    # The smallest distance of a row is to itself, so the k-th neighbour is the (k+1)-th smallest.
    return -lax.top_k(-_squared_distances(rows, points), k + 1)[0][:, k]


@jax.jit
def _inside_any_ball(rows: jax.Array, centres: jax.Array, squared_radii: jax.Array) -> jax.Array:
    return jnp.any(_squared_distances(rows, centres) <= squared_radii[None, :], axis=1)


def _blockwise(fn: Callable, rows: jax.Array, *args, block: int = 1024) -> np.ndarray:
    """fn over row blocks of one padded size (one compilation), concatenated and unpadded."""
    block = min(block, len(rows))
    out = []
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        padded = jnp.pad(chunk, ((0, block - len(chunk)), (0, 0)))
        out.append(np.asarray(fn(padded, *args))[:len(chunk)])
    return np.concatenate(out)


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of fake against real features [N, D].

    Each set's manifold is the union of balls around its points reaching their k-th nearest neighbour.
    Precision: share of fake points inside the real manifold. Recall: share of real points inside the
    fake manifold. Distances are float32 on centred features, computed in blocks on the device.
    """
    real = np.asarray(real_features, np.float32)
    fake = np.asarray(fake_features, np.float32)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"need more than k={k} points per set, got {len(real)} and {len(fake)}")
    centre = real.mean(axis=0)
    real, fake = jnp.asarray(real - centre), jnp.asarray(fake - centre)
    real_radii = jnp.asarray(_blockwise(functools.partial(_kth_neighbour, k=k), real, real))
    fake_radii = jnp.asarray(_blockwise(functools.partial(_kth_neighbour, k=k), fake, fake))
    precision = _blockwise(_inside_any_ball, fake, real, real_radii).mean()
    recall = _blockwise(_inside_any_ball, real, fake, fake_radii).mean()
    return float(precision), float(recall)


def fid_and_pr_from_features(features_a: np.ndarray, features_b: np.ndarray, k: int = 3) -> dict:
    """FID, precision and recall of features_b against the reference features_a ([N, 2048] each)."""
    fid = frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))
    precision, recall = precision_recall(features_a, features_b, k=k)
    return dict(fid=fid, precision=precision, recall=recall, n_a=len(features_a), n_b=len(features_b))


def fid_and_pr(
    images_a: np.ndarray, images_b: np.ndarray, *, k: int = 3, batch_size: int = 50, mesh: Mesh | None = None
) -> dict:
    """uint8 images [N, H, W, C] (A: reference, B: evaluated) → dict(fid, precision, recall, n_a, n_b)."""
    features_a = inception_features(images_a, batch_size=batch_size, mesh=mesh)
    features_b = inception_features(images_b, batch_size=batch_size, mesh=mesh)
    return fid_and_pr_from_features(features_a, features_b, k=k)


def reference_statistics_path(key: str) -> pathlib.Path:
    """<cache>/fid_stats/<readable key>-<hash>.npz: readable, and distinct for distinct keys."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:100]
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return weights.cache_dir() / "fid_stats" / f"{readable}-{digest}.npz"


def cached_reference_statistics(
    key: str, images_fn: Callable[[], np.ndarray], *, batch_size: int = 50, mesh: Mesh | None = None
) -> dict:
    """Reference dict(mu [2048] f64, sigma [2048, 2048] f64, features [N, 2048] f32), cached under `key`.

    Build `key` from everything that changes the images, e.g. 'fashion_mnist/test/28px/n10000'.
    `images_fn` (→ uint8 [N, H, W, C]) is called only when the key is not cached yet.
    """
    path = reference_statistics_path(key)
    if path.exists():
        stored = weights.load_npz(path)
        if str(stored["key"]) != key:
            raise ValueError(f"{path} holds statistics for {str(stored['key'])!r}, not {key!r}")
        return dict(mu=stored["mu"], sigma=stored["sigma"], features=stored["features"])
    features = inception_features(images_fn(), batch_size=batch_size, mesh=mesh)
    mu, sigma = feature_statistics(features)
    weights.save_npz(path, dict(key=np.asarray(key), mu=mu, sigma=sigma, features=features))
    return dict(mu=mu, sigma=sigma, features=features)


def load_images(path: str | pathlib.Path) -> np.ndarray:
    """uint8 images [N, H, W, C] from an `.npz` (key `images`) or a folder of same-sized image files."""
    path = pathlib.Path(path)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
        arrays = []
        for file in files:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert("RGB"), np.uint8))
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images under {path} differ in size; resize them to one size first")
        return np.stack(arrays)
    with np.load(path, allow_pickle=False) as data:
        images = data["images"]
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    return images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vqdiff.eval.fid",
                                     description="FID, precision and recall between two image sets.")
    parser.add_argument("a", help="reference: .npz with uint8 `images` [N, H, W, C], or a folder of images")
    parser.add_argument("b", help="evaluated set, same forms as A")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--k", type=int, default=3, help="neighbourhood size for precision/recall")
    args = parser.parse_args(argv)
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("data",)) if len(devices) > 1 else None
    result = fid_and_pr(load_images(args.a), load_images(args.b), k=args.k, batch_size=args.batch_size,
                        mesh=mesh)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
