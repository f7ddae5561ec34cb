"""The training split encoded once by the frozen tokenizer, so DiT training never re-runs the encoder;
and the latent normalisation (per-channel mean, one scale to unit variance) estimated from data."""
import os

import jax
import numpy as np

from vqdiff import weights
from vqdiff.data import pipeline
from vqdiff.train.progress import Progress


def cache_path(workdir: str) -> str:
    return os.path.join(workdir, "latent_cache.npz")


def cache_key(config, tokenizer) -> str:
    """Everything that changes the cached latents: tokenizer run and step, latent kind, data, flips."""
    d = config.data
    return (f"{os.path.abspath(tokenizer.workdir)}@{tokenizer.step}/{tokenizer.latents}/{d.dataset}/"
            f"{d.train_split}/{d.image_size}->{d.pad_to}/flips={bool(config.tokenizer.cache_flips)}")


def encode_split(config, tokenizer, batch_size: int = 500) -> dict:
    """latents [N(·2 with flips), h, w, D] float32 and labels [N] int32 of the whole train split, in order
    (centre crops; with `config.tokenizer.cache_flips`, each image's mirror image too)."""
    total = pipeline.num_examples(config.data, config.data.train_split)
    report = Progress(0, -(-total // batch_size), batch_size)
    latents, labels = [], []
    batches = pipeline.create_dataset(config.data, split=config.data.train_split, train=False,
                                      global_batch_size=batch_size, seed=config.seed)
    for i, batch in enumerate(batches):
        keep = np.asarray(batch["mask"]) > 0
        images = np.asarray(batch["image"])
        views = [images, images[:, :, ::-1]] if config.tokenizer.cache_flips else [images]
        for view in views:
            latents.append(np.asarray(tokenizer.encode(view))[keep])
            labels.append(np.asarray(batch["label"])[keep])
        if (i + 1) % 20 == 0:
            print(report.line(i + 1, {}, ()).replace("step", "encoding batch"), flush=True)
    return dict(latents=np.concatenate(latents).astype(np.float32),
                labels=np.concatenate(labels).astype(np.int32))


def load_or_build(config, tokenizer, workdir: str) -> dict:
    """The cache of `workdir` when it matches this tokenizer and data; otherwise encodes and writes it
    (atomically: a killed run leaves no half-written cache)."""
    path = cache_path(workdir)
    key = cache_key(config, tokenizer)
    if os.path.exists(path):
        stored = weights.load_npz(path)
        if str(stored["key"]) == key:
            return dict(latents=stored["latents"], labels=stored["labels"])
        print(f"{path} was built for another tokenizer or data ({str(stored['key'])}); re-encoding", flush=True)
    print(f"encoding {config.data.dataset}/{config.data.train_split} with the tokenizer of "
          f"{tokenizer.workdir} (step {tokenizer.step}) into {path}", flush=True)
    cache = encode_split(config, tokenizer)
    if jax.process_index() == 0:
        weights.save_npz(path, dict(key=np.asarray(key), **cache))
    return cache


def latent_statistics(latents: np.ndarray, per_channel: bool = False) -> dict:
    """mean [D] per channel and a scale so that (latents − mean) · scale has unit variance, both float32:
    one scale (LDM's scale factor, with the channel means removed first) or, with `per_channel`, one per
    channel [D], so that every channel has unit variance."""
    flat = np.asarray(latents, np.float64).reshape(-1, np.shape(latents)[-1])
    mean = flat.mean(axis=0)
    std = flat.std(axis=0) if per_channel else np.std(flat - mean)
    return dict(mean=mean.astype(np.float32), scale=(1.0 / np.maximum(std, 1e-8)).astype(np.float32))


def random_batches(cache: dict, global_batch_size: int, seed: int, start_step: int = 0):
    """Endless batches {'latent', 'label', 'mask'} of this process's share of each global batch, drawn
    with replacement by a generator seeded with (seed, step): a resumed run sees the same batches."""
    local = global_batch_size // jax.process_count()
    offset = jax.process_index() * local
    step = start_step
    while True:
        index = np.random.default_rng([seed, step]).integers(0, len(cache["labels"]), global_batch_size)
        index = index[offset:offset + local]
        yield dict(latent=cache["latents"][index], label=cache["labels"][index],
                   mask=np.ones(local, np.float32))
        step += 1
