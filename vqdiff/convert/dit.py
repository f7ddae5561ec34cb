"""Converts a diffusers `DiTTransformer2DModel` checkpoint into `vqdiff.models.dit.DiT` params.

    python -m vqdiff.convert.dit SRC OUT.npz

SRC is a folder written by `save_pretrained` (the model's, or a pipeline's with a `transformer/`
subfolder) or a `.safetensors` file with its `config.json` beside it. OUT.npz holds flat '/'-joined
params, read back with `vqdiff.weights.load_weights` (`allow_pickle=False`); the DiT keyword arguments
are printed as JSON. Only safetensors are read, never pickles; torch is not needed.

Layout differences handled here:
- diffusers keeps a copy of the timestep and label embedders in every block
  (`transformer_blocks.N.norm1.emb`) and its final layer reads block 0's; the copies must agree (they
  are identical in converted official checkpoints) and one is kept, as in the official DiT.
- torch Linear weights are [out, in] (Flax: [in, out]); the patch Conv2d weight [O, I, p, p] becomes
  the Dense kernel on (row, col, channel)-flattened patches; separate q, k, v become one fused qkv.
- diffusers' timestep frequencies use `downscale_freq_shift=1`, so the returned kwargs set
  `timestep_freq_shift=1` to reproduce it; the official DiT used 0.
- diffusers' MLP LayerNorm uses `config.norm_eps` (1e-5 by default), the official DiT and vqdiff 1e-6;
  the difference is ~1e-5 relative and is not carried over.
"""
import argparse
import json
import pathlib
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.models.dit import DiT

COMMAND = "python -m vqdiff.convert.dit"
MODEL_FILE = "diffusion_pytorch_model.safetensors"
# Defaults of DiTTransformer2DModel.__init__, for configs that leave a field out.
_DIFFUSERS_DEFAULTS = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=None,
                           num_layers=28, attention_bias=True, sample_size=32, patch_size=2,
                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                           norm_type="ada_norm_zero", norm_elementwise_affine=False)
_EMBEDDER = "norm1.emb."
_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)")


def dit_kwargs_from_diffusers_config(cfg: Mapping[str, Any]) -> dict:
    """`DiT` keyword arguments (architecture fields only) from a diffusers transformer config."""
    cfg = {**_DIFFUSERS_DEFAULTS, **cfg}
    required = dict(norm_type="ada_norm_zero", activation_fn="gelu-approximate", attention_bias=True,
                    norm_elementwise_affine=False)
    for key, value in required.items():
        if cfg[key] != value:
            raise ValueError(f"diffusers config has {key}={cfg[key]!r}; vqdiff's DiT supports only {value!r}")
    in_channels = cfg["in_channels"]
    out_channels = cfg["out_channels"] or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"diffusers config has out_channels={out_channels} for in_channels={in_channels}; "
                         "DiT predicts in_channels (ε) or 2·in_channels (ε and learned σ)")
    return dict(input_size=cfg["sample_size"], in_channels=in_channels, patch_size=cfg["patch_size"],
                hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], depth=cfg["num_layers"],
                num_heads=cfg["num_attention_heads"], num_classes=cfg["num_embeds_ada_norm"],
                learn_sigma=out_channels == 2 * in_channels, timestep_freq_shift=1.0)


def _to_numpy(tensor) -> np.ndarray:
    """A torch tensor (any float dtype, any device) or array → float32 numpy."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().float().cpu().numpy()
    return np.asarray(tensor, np.float32)


def _dense(state: dict, name: str) -> dict:
    """Pops torch Linear `name` ([out, in] weight) → Flax Dense {'kernel': [in, out], 'bias'}."""
    return {"kernel": state.pop(f"{name}.weight").T, "bias": state.pop(f"{name}.bias")}


def _shared_embedder(state: dict, depth: int, atol: float) -> dict:
    """Pops every block's embedder copy, checks each against block 0's within `atol`, returns block 0's."""
    prefix = f"transformer_blocks.0.{_EMBEDDER}"
    reference = {key[len(prefix):]: state.pop(key) for key in list(state) if key.startswith(prefix)}
    for i in range(1, depth):
        for name, expected in reference.items():
            key = f"transformer_blocks.{i}.{_EMBEDDER}{name}"
            if key not in state:
                raise ValueError(f"diffusers checkpoint lacks {key} (block 0 has it)")
            copy = state.pop(key)
            same_shape = copy.shape == expected.shape
            diff = float(np.max(np.abs(copy - expected), initial=0)) if same_shape else np.inf
            if diff > atol:
                raise ValueError(
                    f"{key} differs from block 0's copy (max |diff| {diff:.3g} > atol {atol:g}): "
                    "the per-block timestep/label embedders must be identical to share one")
    return reference


def params_from_diffusers(state_dict: Mapping[str, Any], *, atol: float = 0.0) -> dict:
    """diffusers DiT state dict (torch tensors or arrays) → nested dict of float32 numpy `DiT` params.

    `atol` is the largest elementwise difference allowed between a block's embedder copy and block 0's.
    """
    state = {key: _to_numpy(value) for key, value in state_dict.items()}
    blocks = {int(m.group(1)) for m in map(_BLOCK_KEY.fullmatch, state) if m}
    depth = len(blocks)
    if blocks != set(range(depth)) or depth == 0:
        raise ValueError(
            f"expected transformer_blocks 0..N-1 in the diffusers checkpoint, found {sorted(blocks)}")
    try:
        embedder = _shared_embedder(state, depth, atol)
        conv = state.pop("pos_embed.proj.weight")  # [O, I, p, p] → [p·p·I, O], (row, col, channel) order
        params = {
            "x_embedder": {"kernel": conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]),
                           "bias": state.pop("pos_embed.proj.bias")},
            "t_embedder": {"fc1": _dense(embedder, "timestep_embedder.linear_1"),
                           "fc2": _dense(embedder, "timestep_embedder.linear_2")},
            "y_embedder": {"embedding_table": {
                "embedding": embedder.pop("class_embedder.embedding_table.weight")}},
            "final_layer": {"adaLN_modulation": _dense(state, "proj_out_1"),
                            "linear": _dense(state, "proj_out_2")},
        }
        for i in range(depth):
            block = f"transformer_blocks.{i}"
            q, k, v = (_dense(state, f"{block}.attn1.to_{name}") for name in "qkv")
            params[f"blocks_{i}"] = {
                "adaLN_modulation": _dense(state, f"{block}.norm1.linear"),
                "qkv": {key: np.concatenate([q[key], k[key], v[key]], axis=-1) for key in ("kernel", "bias")},
                "proj": _dense(state, f"{block}.attn1.to_out.0"),
                "fc1": _dense(state, f"{block}.ff.net.0.proj"),
                "fc2": _dense(state, f"{block}.ff.net.2"),
            }
    except KeyError as e:
        raise ValueError(f"diffusers DiT checkpoint lacks tensor {e.args[0]}") from None
    leftover = sorted(state) + [f"(block 0 embedder) {name}" for name in embedder]
    if leftover:
        raise ValueError(f"diffusers DiT checkpoint has tensors vqdiff's DiT does not use: {leftover}")
    return params


def _model_dir(src: pathlib.Path) -> pathlib.Path:
    """The folder holding the transformer's config.json: SRC, SRC/transformer, or a file's parent."""
    if src.is_file():
        return src.parent
    if not (src / "config.json").is_file() and (src / "transformer").is_dir():
        return src / "transformer"
    return src


def load_diffusers_config(src: str | pathlib.Path) -> dict:
    """The transformer's `config.json` for SRC (see the module docstring)."""
    path = _model_dir(pathlib.Path(src)) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no diffusers config at {path}: the DiT's shape (heads, input size) comes from it")
    return json.loads(path.read_text())


def load_diffusers_state_dict(src: str | pathlib.Path) -> dict[str, np.ndarray]:
    """float32 numpy tensors of a diffusers DiT saved as safetensors (one file, or shards with an index)."""
    from safetensors import safe_open

    src = pathlib.Path(src)
    if src.is_file():
        files = [src]
    else:
        folder = _model_dir(src)
        index = folder / f"{MODEL_FILE}.index.json"
        if (folder / MODEL_FILE).is_file():
            files = [folder / MODEL_FILE]
        elif index.is_file():
            shards = json.loads(index.read_text())["weight_map"].values()
            files = [folder / shard for shard in sorted(set(shards))]
        else:
            raise FileNotFoundError(
                f"no {MODEL_FILE} (or its .index.json) in {folder}; vqdiff reads safetensors only "
                "(re-save with save_pretrained(..., safe_serialization=True))")
    state = {}
    for file in files:
        with safe_open(file, framework="flax") as f:
            for key in f.keys():
                state[key] = np.asarray(f.get_tensor(key), np.float32)
    return state


def convert(src: str | pathlib.Path, out: str | pathlib.Path, *, atol: float = 0.0) -> dict:
    """Converts SRC, checks the params against `DiT.init`, writes OUT.npz; returns the DiT kwargs."""
    kwargs = dit_kwargs_from_diffusers_config(load_diffusers_config(src))
    params = params_from_diffusers(load_diffusers_state_dict(src), atol=atol)
    n, size, channels = 1, kwargs["input_size"], kwargs["in_channels"]
    expected = jax.eval_shape(lambda: DiT(**kwargs).init(
        jax.random.key(0), jnp.zeros((n, size, size, channels)), jnp.zeros((n,)), jnp.zeros((n,), jnp.int32)))
    weights.check_shapes(params, expected["params"], "DiT")
    weights.save_weights(out, params)
    return kwargs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("src", help="diffusers model or pipeline folder, or a .safetensors file")
    parser.add_argument("out", help="output .npz")
    parser.add_argument("--atol", type=float, default=0.0,
                        help="largest difference allowed between the per-block embedder copies")
    args = parser.parse_args(argv)
    kwargs = convert(args.src, args.out, atol=args.atol)
    print(f"DiT params → {args.out}", file=sys.stderr)
    print(json.dumps(kwargs))


if __name__ == "__main__":
    main()
