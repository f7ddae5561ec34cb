"""Training of the text-to-image latent DiT: the class-conditional DiT's update and loop, conditioned on
captions through a text encoder (`config.text.encoder`: frozen 'minilm' or jointly trained 'bytes').

Captions (`config.text.captions`), at every step one per image, or the empty caption with probability
`config.text.caption_dropout_prob`:
    'class_templates': written from a training template and the image's class name
        (`vqdiff.data.captions`); a finite set, encoded once into a caption table (`text_conditioning`),
        so the step never runs a frozen encoder;
    'dataset': drawn from the image's own captions (`config.data.caption_feature`, e.g. COCO's), cached
        with the latents and encoded per batch.
"""
import os

import numpy as np

from vqdiff.data import captions as caption_lib
from vqdiff.models.text import build_text_encoder
from vqdiff.models.text_dit import TextToImageDiT
from vqdiff.train import dit_trainer, latent_cache, loop, text_conditioning
from vqdiff.train.validation import validate_t2i_config

CAPTION_SOURCES = ("class_templates", "dataset")


def build_t2i_dit(config, latent_shape) -> TextToImageDiT:
    """The DiT of `config.model` over latents of `latent_shape`, with the trained text encoder of
    `config.text.encoder` when it is not a frozen one."""
    dit = dit_trainer.build_dit(config, latent_shape)
    encoder = config.text.encoder
    trained = None if text_conditioning.is_frozen(encoder) else build_text_encoder(encoder)
    return TextToImageDiT(dit=dit, text_encoder=trained)


class TextToImageTrainer(dit_trainer.DiTTrainer):
    """DiTTrainer of a TextToImageDiT; `caption_encoder` turns captions into caption-table rows."""

    def __init__(self, config, tokenizer, devices=None):
        self.caption_encoder = text_conditioning.CaptionEncoder(config.text.encoder)
        super().__init__(config, tokenizer, devices, model=build_t2i_dit(config, tokenizer.latent_shape),
                         condition=self.caption_encoder([""]))


def grid_prompts(config, per_prompt: int) -> list[str]:
    """`config.text.grid_prompts`, or for class templates one prompt per class from the first held-out
    template; each repeated `per_prompt` times."""
    if config.text.captions == "dataset":
        prompts = list(config.text.grid_prompts)
    else:
        prompts = [caption_lib.fill(caption_lib.HELD_OUT_TEMPLATES[0], name) for name in config.text.class_names]
    return [p for p in prompts for _ in range(per_prompt)]


def prompt_table(encoder: text_conditioning.CaptionEncoder, prompts):
    """(caption table of the distinct prompts, row index of each prompt)."""
    distinct = list(dict.fromkeys(prompts))
    index = {p: i for i, p in enumerate(distinct)}
    return encoder.table(distinct), np.array([index[p] for p in prompts], np.int32)


def train(config, workdir: str):
    """Trains (or resumes) the text-to-image DiT of `config` in `workdir`; returns the last step's metrics."""
    validate_t2i_config(config)
    return loop.train_in_workdir(config, workdir, lambda: _train(config, workdir))


def _train(config, workdir: str):
    from vqdiff.train import dit_sampling  # grids during training

    tokenizer = dit_trainer.load_tokenizer(config)
    trainer = TextToImageTrainer(config, tokenizer)
    if config.text.captions == "dataset":
        cache = text_conditioning.load_or_build_dataset_cache(config, tokenizer, workdir)

        def make_batches(start):
            return text_conditioning.dataset_caption_batches(cache, trainer.caption_encoder, config, start)
    else:
        cache = latent_cache.load_or_build(config, tokenizer, workdir)
        prompts, _ = text_conditioning.class_prompts(config.text.class_names, "train")
        table = trainer.caption_encoder.table(prompts)
        num_templates = len(caption_lib.TRAIN_TEMPLATES)

        def make_batches(start):
            return text_conditioning.caption_batches(cache, table, num_templates, config, start)

    generate = dit_sampling.ImageGenerator(trainer, config.train_grid)
    grid_table, grid_index = prompt_table(trainer.caption_encoder,
                                          grid_prompts(config, config.train_grid.per_class))

    def draw_grid(state, step):
        images = generate(state, grid_index, seed=config.seed, captions=grid_table)
        dit_sampling.save_class_grid(images, config.train_grid.per_class,
                                     os.path.join(workdir, "grids", f"samples_{step:07d}.png"))

    return loop.run_loop(config, workdir, trainer, make_batches=make_batches, draw_grid=draw_grid,
                         progress_keys=dit_trainer.PROGRESS_KEYS,
                         prepare_state=dit_trainer.latent_stats_setter(config, trainer, cache))
