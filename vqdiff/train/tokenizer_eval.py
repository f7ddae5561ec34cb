"""Evaluation of a trained tokenizer over a whole split: PSNR, SSIM, codebook usage, perplexity."""
import os

import jax
import numpy as np

from vqdiff.data import pipeline
from vqdiff.eval.image_metrics import crop_padding, psnr, ssim, to_unit_range
from vqdiff.train import checkpoint, sharding
from vqdiff.train.tokenizer_trainer import Trainer, reconstruction_grid, save_metrics
from vqdiff.train.validation import validate_tokenizer_config


def codebook_statistics(code_counts: np.ndarray) -> dict:
    """Usage (fraction of codes used at least once) and perplexity (exp entropy) of a code histogram."""
    total = code_counts.sum()
    p = code_counts[code_counts > 0] / max(total, 1)
    return dict(codebook_usage=float(np.mean(code_counts > 0)),
                perplexity=float(np.exp(-np.sum(p * np.log(p)))))


def evaluate(config, workdir: str) -> dict:
    """Restores the newest checkpoint of `workdir` and evaluates it on `config.data.eval_split`.

    Returns (and writes to `<workdir>/eval/metrics_<step>.json`) the metrics dict with keys `step`,
    `psnr` (dB, mean over images of [0, 1] pixels), `ssim`, `codebook_usage` (0–1), `perplexity`,
    `num_images`; saves a reconstruction grid beside it.
    """
    validate_tokenizer_config(config)
    trainer = Trainer(config)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    state = trainer.restore(ckpt)
    step = int(jax.device_get(state.step))
    reconstruct = trainer.reconstruct_fn(config.eval.use_ema_params)

    @jax.jit
    def image_metrics(images, reconstructions):
        x = to_unit_range(crop_padding(images, config.data.image_size, config.data.pad_to))
        y = to_unit_range(crop_padding(reconstructions, config.data.image_size, config.data.pad_to))
        return psnr(y, x), ssim(y, x)

    num_codes = config.quantizer.num_codes
    code_counts = np.zeros(num_codes, np.int64)
    sums = dict(psnr=0.0, ssim=0.0)
    num_images = 0
    first = None
    batches = pipeline.create_dataset(config.data, split=config.data.eval_split, train=False,
                                      global_batch_size=config.eval.batch_size, seed=config.seed)
    for local_batch in batches:
        batch = sharding.global_batch(local_batch, trainer.batch_sharding)
        recon, indices = reconstruct(state, batch["image"])
        batch_psnr, batch_ssim = image_metrics(batch["image"], recon)
        mask = np.asarray(jax.device_get(batch["mask"])) > 0
        sums["psnr"] += float(np.sum(np.asarray(batch_psnr)[mask]))
        sums["ssim"] += float(np.sum(np.asarray(batch_ssim)[mask]))
        code_counts += np.bincount(np.asarray(indices)[mask].ravel(), minlength=num_codes)
        num_images += int(mask.sum())
        if first is None:
            first = (np.asarray(batch["image"])[:config.eval.num_grid_images],
                     np.asarray(recon)[:config.eval.num_grid_images])

    metrics = dict(step=step, psnr=sums["psnr"] / num_images, ssim=sums["ssim"] / num_images,
                   **codebook_statistics(code_counts), num_images=num_images)
    if jax.process_index() == 0:
        path = save_metrics(workdir, metrics)
        reconstruction_grid(*first, os.path.join(os.path.dirname(path), f"reconstructions_{step:07d}.png"))
    return metrics
