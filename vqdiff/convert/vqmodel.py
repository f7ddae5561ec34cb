"""Converts a diffusers `VQModel` checkpoint into `vqdiff.models.autoencoder.VQAutoencoder` params.

    python -m vqdiff.convert.vqmodel SRC OUT.npz

SRC is a folder written by `save_pretrained`: the model's, or a pipeline's with a `vqvae/` subfolder. It
is read with `diffusers.VQModel.from_pretrained`, which also renames the attention tensors of checkpoints
older than diffusers 0.14 (torch and diffusers are needed for the command, not for the functions that
take a config and a state dict). OUT.npz holds flat '/'-joined params, read back with
`vqdiff.weights.load_weights`; the matching `config.model`, `config.quantizer` and `config.data.channels`
values are printed as JSON.

Layout differences handled here:
- torch Conv2d weights [O, I, kh, kw] become Flax kernels [kh, kw, I, O], Linear weights [out, in] become
  [in, out], GroupNorm `weight` becomes `scale`.
- diffusers numbers decoder blocks from the lowest resolution up (`up_blocks.0` is the lowest level);
  vqdiff names them by level, like the encoder's (`up_{L-1}_...`).
- diffusers chooses attention per block type; vqdiff attends after every residual block of the lowest
  level (`AttnDownEncoderBlock2D` last and `AttnUpDecoderBlock2D` first, both or neither) and, separately,
  in the middle block. Other placements raise ValueError.
- diffusers' quantizer keeps taming's legacy loss, commitment + 0.25·codebook, where vqdiff's classic
  codebook trains with codebook + β·commitment (β = 0.25). The forward pass is the same; only further
  training from a converted checkpoint differs.
- Nearest codes: diffusers takes the argmin of `torch.cdist`, vqdiff of ‖z‖² − 2 z·c + ‖c‖²; they agree up
  to float32 ties.
"""
import argparse
import json
import pathlib
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.models.autoencoder import VQAutoencoder

COMMAND = "python -m vqdiff.convert.vqmodel"
PIPELINE_SUBFOLDER = "vqvae"
# Defaults of VQModel.__init__, for configs that leave a field out.
_DIFFUSERS_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                           up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
                           act_fn="silu", latent_channels=3, num_vq_embeddings=256, norm_num_groups=32,
                           vq_embed_dim=None, norm_type="group", mid_block_add_attention=True)
_DOWN, _ATTN_DOWN = "DownEncoderBlock2D", "AttnDownEncoderBlock2D"
_UP, _ATTN_UP = "UpDecoderBlock2D", "AttnUpDecoderBlock2D"
# diffusers' VQModel hard-codes its quantizer's beta.
_BETA = 0.25


def _lowest_level_attention(down_types: list, up_types: list) -> bool:
    """Whether the lowest level attends, after checking diffusers' block types fit vqdiff's layout."""
    levels = len(down_types)
    for kind, types, plain, attn, lowest in (("down", down_types, _DOWN, _ATTN_DOWN, levels - 1),
                                             ("up", up_types, _UP, _ATTN_UP, 0)):
        for i, block in enumerate(types):
            if block not in (plain, attn):
                raise ValueError(f"diffusers config has {kind}_block_types[{i}]={block!r}; vqdiff supports "
                                 f"{plain!r}, and {attn!r} at the lowest resolution")
            if block == attn and i != lowest:
                raise ValueError(f"diffusers config has {kind}_block_types[{i}]={block!r}; vqdiff's autoencoder "
                                 f"has attention only at the lowest resolution ({kind}_block_types[{lowest}])")
    encoder, decoder = down_types[-1] == _ATTN_DOWN, up_types[0] == _ATTN_UP
    if encoder != decoder:
        raise ValueError(f"diffusers config has down_block_types[-1]={down_types[-1]!r} but up_block_types[0]="
                         f"{up_types[0]!r}; vqdiff's attention_at_lowest applies to encoder and decoder alike")
    return encoder


def config_from_diffusers(cfg: Mapping[str, Any]) -> dict:
    """{'model', 'quantizer', 'data'} values of a vqdiff tokenizer config from a diffusers `VQModel.config`.

    'model' and 'quantizer' are complete `config.model` / `config.quantizer` dicts; 'data' holds only
    `channels` (the image channels). Raises ValueError naming the first option vqdiff cannot represent.
    """
    cfg = {**_DIFFUSERS_DEFAULTS, **cfg}
    for key, value in dict(act_fn="silu", norm_type="group").items():
        if cfg[key] != value:
            raise ValueError(
                f"diffusers config has {key}={cfg[key]!r}; vqdiff's autoencoder supports only {value!r}")
    if cfg["in_channels"] != cfg["out_channels"]:
        raise ValueError(f"diffusers config has in_channels={cfg['in_channels']} and out_channels="
                         f"{cfg['out_channels']}; vqdiff's autoencoder reconstructs its input's channels")
    widths = list(cfg["block_out_channels"])
    down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if not len(widths) == len(down_types) == len(up_types):
        raise ValueError(f"diffusers config has {len(widths)} block_out_channels, {len(down_types)} "
                         f"down_block_types and {len(up_types)} up_block_types; they must agree")
    if any(width % widths[0] for width in widths):
        raise ValueError(f"diffusers config has block_out_channels={widths}; vqdiff's widths are channels × an "
                         f"integer multiplier, so each must be a multiple of the first ({widths[0]})")
    model = dict(
        channels=widths[0], channel_multipliers=tuple(width // widths[0] for width in widths),
        num_res_blocks=cfg["layers_per_block"], latent_channels=cfg["latent_channels"],
        attention_at_lowest=_lowest_level_attention(down_types, up_types),
        middle_attention=bool(cfg["mid_block_add_attention"]), norm_groups=cfg["norm_num_groups"], dropout=0.0,
        upsample="nearest", space_to_depth=1, dtype="float32")
    quantizer = dict(
        num_codes=cfg["num_vq_embeddings"], embedding_dim=cfg["vq_embed_dim"] or cfg["latent_channels"],
        lookup_dim=None, beta=_BETA, l2_normalize_codes=False, use_ema=False, ema_decay=0.99, ema_epsilon=1e-5,
        dead_code_threshold=0.0)
    return dict(model=model, quantizer=quantizer, data=dict(channels=cfg["in_channels"]))


def _to_numpy(tensor) -> np.ndarray:
    """A torch tensor (any float dtype, any device) or array → float32 numpy."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().float().cpu().numpy()
    return np.asarray(tensor, np.float32)


def _conv(state: dict, name: str) -> dict:
    """Pops torch Conv2d `name` (weight [O, I, kh, kw]) → Flax Conv {'kernel': [kh, kw, I, O], 'bias'}."""
    return {"kernel": state.pop(f"{name}.weight").transpose(2, 3, 1, 0), "bias": state.pop(f"{name}.bias")}


def _dense(state: dict, name: str) -> dict:
    """Pops torch Linear `name` (weight [out, in]) → Flax Dense {'kernel': [in, out], 'bias'}."""
    return {"kernel": state.pop(f"{name}.weight").T, "bias": state.pop(f"{name}.bias")}


def _norm(state: dict, name: str) -> dict:
    """Pops torch GroupNorm `name` → Flax GroupNorm {'scale', 'bias'}."""
    return {"scale": state.pop(f"{name}.weight"), "bias": state.pop(f"{name}.bias")}


def _resnet(state: dict, name: str) -> dict:
    """Pops a diffusers ResnetBlock2D → vqdiff ResnetBlock params (a shortcut only where diffusers has one)."""
    block = {"norm1": _norm(state, f"{name}.norm1"), "conv1": _conv(state, f"{name}.conv1"),
             "norm2": _norm(state, f"{name}.norm2"), "conv2": _conv(state, f"{name}.conv2")}
    if f"{name}.conv_shortcut.weight" in state:
        block["shortcut"] = _conv(state, f"{name}.conv_shortcut")
    return block


def _attention(state: dict, name: str) -> dict:
    """Pops a diffusers single-head spatial Attention → vqdiff AttentionBlock params."""
    return {"norm": _norm(state, f"{name}.group_norm"), "q": _dense(state, f"{name}.to_q"),
            "k": _dense(state, f"{name}.to_k"), "v": _dense(state, f"{name}.to_v"),
            "proj_out": _dense(state, f"{name}.to_out.0")}


def _middle(state: dict, name: str, attention: bool) -> dict:
    """Pops a diffusers UNetMidBlock2D (res, attention, res) → vqdiff MiddleBlock params."""
    block = {"res_1": _resnet(state, f"{name}.resnets.0"), "res_2": _resnet(state, f"{name}.resnets.1")}
    if attention:
        block["attention"] = _attention(state, f"{name}.attentions.0")
    return block


def params_from_diffusers(state_dict: Mapping[str, Any], diffusers_config: Mapping[str, Any]) -> dict:
    """diffusers VQModel state dict (torch tensors or arrays) → nested dict of float32 numpy params.

    The params are those of `VQAutoencoder` built from `config_from_diffusers(diffusers_config)`.
    Raises ValueError if a tensor the config implies is missing or one is left unused.
    """
    model = config_from_diffusers(diffusers_config)["model"]
    levels, num_res = len(model["channel_multipliers"]), model["num_res_blocks"]
    lowest_attends, middle_attends = model["attention_at_lowest"], model["middle_attention"]
    state = {key: _to_numpy(value) for key, value in state_dict.items()}
    try:
        encoder = {"conv_in": _conv(state, "encoder.conv_in")}
        for level in range(levels):
            block = f"encoder.down_blocks.{level}"
            for i in range(num_res):
                encoder[f"down_{level}_res_{i}"] = _resnet(state, f"{block}.resnets.{i}")
                if lowest_attends and level == levels - 1:
                    encoder[f"down_{level}_attention_{i}"] = _attention(state, f"{block}.attentions.{i}")
            if level != levels - 1:
                encoder[f"down_{level}_downsample"] = {"conv": _conv(state, f"{block}.downsamplers.0.conv")}
        encoder["middle"] = _middle(state, "encoder.mid_block", middle_attends)
        encoder["norm_out"] = _norm(state, "encoder.conv_norm_out")
        encoder["conv_out"] = _conv(state, "encoder.conv_out")

        decoder = {"conv_in": _conv(state, "decoder.conv_in"),
                   "middle": _middle(state, "decoder.mid_block", middle_attends)}
        for level in range(levels):
            block = f"decoder.up_blocks.{levels - 1 - level}"
            for i in range(num_res + 1):
                decoder[f"up_{level}_res_{i}"] = _resnet(state, f"{block}.resnets.{i}")
                if lowest_attends and level == levels - 1:
                    decoder[f"up_{level}_attention_{i}"] = _attention(state, f"{block}.attentions.{i}")
            if level != 0:
                decoder[f"up_{level}_upsample"] = {"conv": _conv(state, f"{block}.upsamplers.0.conv")}
        decoder["norm_out"] = _norm(state, "decoder.conv_norm_out")
        decoder["conv_out"] = _conv(state, "decoder.conv_out")

        params = {"encoder": encoder, "decoder": decoder, "quant_conv": _conv(state, "quant_conv"),
                  "post_quant_conv": _conv(state, "post_quant_conv"),
                  "quantizer": {"codebook": state.pop("quantize.embedding.weight")}}
    except KeyError as e:
        raise ValueError(f"diffusers VQModel checkpoint lacks tensor {e.args[0]}") from None
    if state:
        raise ValueError(
            f"diffusers VQModel checkpoint has tensors vqdiff's autoencoder does not use: {sorted(state)}")
    return params


def param_shapes(config: Mapping[str, Any]) -> dict:
    """Param shapes (`jax.ShapeDtypeStruct`s) of the `VQAutoencoder` that `config_from_diffusers` describes."""
    model = VQAutoencoder(model_config=config["model"], quantizer_config=config["quantizer"],
                          image_channels=config["data"]["channels"])
    side = 2 ** (len(config["model"]["channel_multipliers"]) - 1)
    x = jnp.zeros((1, side, side, config["data"]["channels"]))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]


def load_diffusers_vqmodel(src: str | pathlib.Path):
    """`diffusers.VQModel` saved at SRC, or in SRC's `vqvae/` subfolder (a pipeline's)."""
    from diffusers import VQModel

    src = pathlib.Path(src)
    if not (src / "config.json").is_file() and (src / PIPELINE_SUBFOLDER / "config.json").is_file():
        src = src / PIPELINE_SUBFOLDER
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers config.json in {src} or {src / PIPELINE_SUBFOLDER}")
    return VQModel.from_pretrained(src)


def convert(src: str | pathlib.Path, out: str | pathlib.Path) -> dict:
    """Converts SRC, checks the params against `VQAutoencoder.init`, writes OUT.npz; returns the config."""
    vqmodel = load_diffusers_vqmodel(src)
    config = config_from_diffusers(vqmodel.config)
    params = params_from_diffusers(vqmodel.state_dict(), vqmodel.config)
    weights.check_shapes(params, param_shapes(config), "VQAutoencoder")
    weights.save_weights(out, params)
    return config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("src", help="diffusers VQModel folder, or a pipeline folder with a vqvae/ subfolder")
    parser.add_argument("out", help="output .npz")
    args = parser.parse_args(argv)
    config = convert(args.src, args.out)
    print(f"VQAutoencoder params → {args.out}", file=sys.stderr)
    print(json.dumps(config))


if __name__ == "__main__":
    main()
