"""Captions → the text input of a text-to-image DiT, and the caption batches of training.

A caption table is a dict of arrays whose rows are captions, the last row always the empty caption
(the unconditional branch of classifier-free guidance):
    frozen encoder ('minilm'): {'tokens' [K+1, L, D], 'mask' [K+1, L], 'pooled' [K+1, D]}, encoded once,
        so training and sampling never run the frozen encoder again;
    trained encoder ('bytes'): {'token_ids' [K+1, L], 'mask' [K+1, L]}, encoded inside the model.
Caption dropout replaces a caption by that last row, so a dropped caption is exactly the empty one.

Batches: `caption_batches` draws class-template captions from a table (Fashion-MNIST); image–caption
datasets (COCO) cache latents with each image's captions (`load_or_build_dataset_cache`) and encode the
captions drawn for each step (`dataset_caption_batches`).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from vqdiff import weights
from vqdiff.data import captions as caption_lib
from vqdiff.models import text
from vqdiff.train import latent_cache

FROZEN_KINDS = ("minilm",)


def is_frozen(text_config) -> bool:
    return text_config["kind"] in FROZEN_KINDS


class CaptionEncoder:
    """captions → caption-table rows (numpy) for `text_config`; the frozen encoder is jitted once."""

    def __init__(self, text_config, batch_size: int = 256):
        self.text_config = dict(text_config)
        self.batch_size = batch_size
        if is_frozen(self.text_config):
            module, params = text.load_minilm()
            self._variables = {"params": params}
            self._apply = jax.jit(module.apply)

    def __call__(self, texts) -> dict:
        token_ids, mask = text.tokenize(list(texts), self.text_config)
        if not is_frozen(self.text_config):
            return dict(token_ids=token_ids, mask=mask)
        rows = []
        for start in range(0, len(token_ids), self.batch_size):
            tokens, out_mask, pooled = self._apply(self._variables, token_ids[start:start + self.batch_size],
                                                   mask[start:start + self.batch_size])
            rows.append(dict(tokens=np.asarray(tokens), mask=np.asarray(out_mask), pooled=np.asarray(pooled)))
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

    def table(self, texts) -> dict:
        """The caption table of `texts` followed by the empty caption (row len(texts))."""
        return self(list(texts) + [""])


def empty_index(table: dict) -> int:
    return len(table["mask"]) - 1


def lookup(table: dict, index):
    """Rows `index` [B] of a caption table (numpy or jax arrays alike)."""
    take = (lambda a: a[index]) if isinstance(index, np.ndarray) else (lambda a: jnp.take(a, index, axis=0))
    return jax.tree.map(take, table)


def drop_captions(index, drop, table: dict):
    """Caption indices [B] with those where `drop` [B] is true replaced by the empty caption's."""
    return np.where(drop, empty_index(table), index)


def caption_batches(cache: dict, table: dict, num_templates: int, config, start_step: int = 0):
    """The latent cache's seeded batches with `text`: per example one of the `num_templates` training
    captions of its class, drawn with the step's generator, or the empty caption with probability
    `config.text.caption_dropout_prob`. A function of (seed, step), so a resumed run sees the same batches."""
    step = start_step
    for batch in latent_cache.random_batches(cache, config.train.batch_size, config.seed, start_step):
        rng = np.random.default_rng([config.seed, step, 1])
        template = rng.integers(0, num_templates, len(batch["label"]))
        drop = rng.random(len(batch["label"])) < config.text.caption_dropout_prob
        index = drop_captions(batch["label"] * num_templates + template, drop, table)
        yield dict(batch, text=lookup(table, index))
        step += 1


def class_prompts(class_names, template_set: str) -> tuple[list[str], np.ndarray]:
    """Every caption of `template_set` ('train' or 'held_out') and the class of each."""
    templates = caption_lib.TEMPLATE_SETS[template_set]
    prompts = caption_lib.class_captions(class_names, templates)
    return prompts, caption_lib.class_of_caption(np.arange(len(prompts)), len(templates)).astype(np.int32)


def dataset_cache_path(workdir: str) -> str:
    return os.path.join(workdir, "caption_cache.npz")


def load_or_build_dataset_cache(config, tokenizer, workdir: str, batch_size: int = 256) -> dict:
    """The training split of an image–caption dataset, encoded once: latents [N, h, w, D] and captions
    [N, K] (str, '' after each image's last), with `counts` [N] of captions per image. Rebuilt when the
    tokenizer or data change, written atomically."""
    path = dataset_cache_path(workdir)
    key = latent_cache.cache_key(config, tokenizer) + f"/captions={config.data.caption_feature}"
    if os.path.exists(path):
        stored = weights.load_npz(path)
        if str(stored.pop("key")) == key:
            return stored
    print(f"encoding {config.data.dataset}/{config.data.train_split} images and captions into {path}",
          flush=True)
    latents, captions = [], []
    for batch in caption_lib.image_caption_batches(config.data, config.data.train_split, batch_size):
        latents.append(np.asarray(tokenizer.encode(batch["image"]), np.float32))
        captions.append(batch["captions"])
    width = max(c.shape[1] for c in captions)
    captions = np.concatenate([np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values="")
                               for c in captions])
    cache = dict(latents=np.concatenate(latents), captions=captions.astype(str),
                 counts=(captions != "").sum(axis=1).astype(np.int32))
    if not cache["counts"].all():
        raise ValueError(f"{config.data.dataset}/{config.data.train_split} has images without captions "
                         f"in {config.data.caption_feature!r}")
    if jax.process_index() == 0:
        weights.save_npz(path, dict(key=np.asarray(key), **cache))
    return cache


def dataset_caption_batches(cache: dict, encoder: CaptionEncoder, config, start_step: int = 0):
    """Seeded batches {'latent', 'label', 'mask', 'text'} of the image–caption cache: per image one of its
    captions drawn at each step (or the empty caption with probability `config.text.caption_dropout_prob`),
    encoded for the step (the set of captions is too large to encode once)."""
    images = dict(latents=cache["latents"], labels=np.arange(len(cache["latents"]), dtype=np.int32))
    step = start_step
    for batch in latent_cache.random_batches(images, config.train.batch_size, config.seed, start_step):
        index = batch["label"]
        rng = np.random.default_rng([config.seed, step, 1])
        choice = (rng.random(len(index)) * cache["counts"][index]).astype(np.int64)
        drop = rng.random(len(index)) < config.text.caption_dropout_prob
        texts = np.where(drop, "", cache["captions"][index, choice])
        yield dict(batch, text=encoder(texts.tolist()))
        step += 1
