"""A trained tokenizer loaded from its workdir, frozen: jitted encode to latents and decode from them."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections

from vqdiff import compiler_options
from vqdiff.errors import UserError
from vqdiff.models.autoencoder import downsampling_factor
from vqdiff.train import checkpoint

LATENT_KINDS = ("continuous", "quantized")


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved as `<workdir>/config.json`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist: is {workdir} a vqdiff workdir? Train the tokenizer first "
                        f"(python run.py --config=experiments/vqvae_fashion_mnist.py --workdir={workdir})")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def encode_latents(model, variables, images, latents: str):
    """images [B, H, W, C] in [-1, 1] → latents [B, h, w, D]: the encoder's output ('continuous') or
    its nearest codebook entries ('quantized')."""
    z = model.apply(variables, images, method=model.encode)
    if latents == "quantized":
        z, _ = model.apply(variables, z, method=model.quantize)
    return z


def decode_latents(model, variables, latents, snap_to_codebook: bool = True):
    """latents [B, h, w, D] → images [B, H, W, C] (float32, about [-1, 1]). By default latents are
    snapped to the codebook first, so a generated latent decodes the way a real one does; without
    the snap the decoder reads the continuous latent as it is."""
    if snap_to_codebook:
        latents, _ = model.apply(variables, latents, method=model.quantize)
    return model.apply(variables, latents, method=model.decode)


class FrozenTokenizer:
    """The newest checkpoint (or `step`) of a tokenizer workdir.

    `encode(images)` / `decode(latents)` are jitted; `variables` and `model` allow pure use inside
    other jitted functions. `latent_shape` is (h, w, D); `config` the tokenizer's own config.
    """

    def __init__(self, workdir: str, *, latents: str = "continuous", use_ema_params: bool = False,
                 step: int | None = None):
        from vqdiff.train.vqgan_trainer import tokenizer_trainer  # the tokenizer's own model and state layout

        if latents not in LATENT_KINDS:
            raise UserError(f"config.tokenizer.latents={latents!r}: use one of {LATENT_KINDS}")
        if not os.path.isdir(workdir):
            raise UserError(f"config.tokenizer.workdir={workdir} does not exist: train the tokenizer first")
        self.workdir = workdir
        self.config = load_workdir_config(workdir)
        trainer = tokenizer_trainer(self.config)
        state = trainer.restore(checkpoint.Checkpointer(workdir, create=False), step)
        self.step = int(jax.device_get(state.step))
        self.model = trainer.model
        self.latents = latents
        self.variables = {"params": state.ema_params if use_ema_params else state.params,
                          **state.model_state}
        d = self.config.data
        side = (d.pad_to or d.image_size) // downsampling_factor(self.config.model)
        self.latent_shape = (side, side, self.config.quantizer.embedding_dim)
        self._encode = compiler_options.jit(functools.partial(encode_latents, self.model, latents=latents),
                                            "convolutional")
        self._decode = compiler_options.jit(functools.partial(decode_latents, self.model), "convolutional")

    def encode(self, images) -> jax.Array:
        """images [B, H, W, C] in [-1, 1] (model resolution, padding included) → latents [B, h, w, D]."""
        return self._encode(self.variables, jnp.asarray(images, jnp.float32))

    def decode(self, latents) -> jax.Array:
        """latents [B, h, w, D] → images [B, H, W, C] in about [-1, 1]."""
        return self._decode(self.variables, jnp.asarray(latents, jnp.float32))
