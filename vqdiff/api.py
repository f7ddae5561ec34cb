"""Notebook API: load a trained tokenizer or DiT from its workdir and call plain functions.

    from vqdiff import api
    tokenizer = api.load_tokenizer("workdirs/vqvae_fmnist")
    latents = tokenizer.encode(images)            # images [B, 32, 32, 1] in [-1, 1] → [B, 8, 8, 4]
    recon = tokenizer.decode(latents)             # → [B, 32, 32, 1]
    dit = api.load_dit("workdirs/dit_fmnist")
    images = dit.sample([0, 1, 2], guidance_scale=2.0, num_steps=50, seed=0)   # uint8 [3, 28, 28, 1]

Everything runs jitted on the default devices; `tokenizer.model` / `tokenizer.variables` and
`dit.model` / `dit.params` are there for writing your own jax functions.
"""
import ml_collections
import numpy as np

from vqdiff.train import checkpoint
from vqdiff.train.frozen_tokenizer import FrozenTokenizer, load_workdir_config


def load_tokenizer(workdir: str, *, latents: str = "continuous", use_ema_params: bool = False,
                   step: int | None = None) -> FrozenTokenizer:
    """The tokenizer trained in `workdir` (newest checkpoint unless `step`), with jitted `encode`
    (images in [-1, 1] → latents, 'continuous' or 'quantized') and `decode` (latents → images)."""
    return FrozenTokenizer(workdir, latents=latents, use_ema_params=use_ema_params, step=step)


class LoadedDiT:
    """A trained DiT with its tokenizer: `sample(labels, ...)` → uint8 images at native resolution."""

    def __init__(self, workdir: str, tokenizer_workdir: str | None = None):
        from vqdiff.train.dit_trainer import DiTTrainer, load_tokenizer as load_dit_tokenizer

        self.config = load_workdir_config(workdir)
        if tokenizer_workdir is not None:
            self.config.tokenizer.workdir = tokenizer_workdir
        self.trainer = DiTTrainer(self.config, load_dit_tokenizer(self.config))
        self.state = self.trainer.restore(checkpoint.Checkpointer(workdir, create=False))
        self.model = self.trainer.model
        self.params = self.state.ema_params
        self.tokenizer = self.trainer.tokenizer

    def sample(self, labels, *, guidance_scale: float | None = None, num_steps: int | None = None,
               sampler: str | None = None, seed: int = 0, use_ema_params: bool = True) -> np.ndarray:
        """labels: class ids [N] → uint8 images [N, H, W, C]; unset options come from `config.sample`."""
        from vqdiff.train.dit_sampling import ImageGenerator

        s = ml_collections.ConfigDict(self.config.sample.to_dict())
        for key, value in (("guidance_scale", guidance_scale), ("num_steps", num_steps), ("sampler", sampler)):
            if value is not None:
                s[key] = value
        s.use_ema_params = use_ema_params
        return ImageGenerator(self.trainer, s)(self.state, np.asarray(labels, np.int32), seed=seed)


def load_dit(workdir: str, *, tokenizer_workdir: str | None = None) -> LoadedDiT:
    """The DiT trained in `workdir` and the tokenizer its config names (or `tokenizer_workdir`, when
    the tokenizer has moved)."""
    return LoadedDiT(workdir, tokenizer_workdir)
