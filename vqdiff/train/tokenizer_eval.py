"""Evaluation of a trained tokenizer over a whole split: PSNR, SSIM, LPIPS, codebook usage, perplexity,
and rFID (reconstructions of the first `config.eval.rfid_num_images` eval images against those images)."""
import functools
import os

import jax
import numpy as np

from vqdiff import compiler_options
from vqdiff.data import pipeline
from vqdiff.eval.image_metrics import crop_padding, psnr, ssim, to_unit_range
from vqdiff.models.lpips import make_lpips_fn
from vqdiff.train import checkpoint, fid_reference, loop, sharding
from vqdiff.train.tokenizer_trainer import reconstruction_grid
from vqdiff.train.validation import validate_tokenizer_config
from vqdiff.train.vqgan_trainer import tokenizer_trainer


def codebook_statistics(code_counts: np.ndarray) -> dict:
    """Usage (fraction of codes used at least once) and perplexity (exp entropy) of a code histogram."""
    total = code_counts.sum()
    p = code_counts[code_counts > 0] / max(total, 1)
    return dict(codebook_usage=float(np.mean(code_counts > 0)),
                perplexity=float(np.exp(-np.sum(p * np.log(p)))))


def evaluate(config, workdir: str) -> dict:
    """Restores the newest checkpoint of `workdir` (a VQ-VAE or VQGAN run) and evaluates it on `config.data.eval_split`.

    Returns (and writes to `<workdir>/eval/metrics_<step>.json`) the metrics dict with keys `step`,
    `psnr` (dB, mean over images of [0, 1] pixels), `ssim`, `lpips` (`config.eval.lpips_backbone`, on
    the model-resolution images, gray tiled to RGB), `codebook_usage` (0–1), `perplexity`, `rfid`
    (absent when `config.eval.rfid_num_images` is 0), `num_images`; saves a reconstruction grid beside it.
    """
    validate_tokenizer_config(config)
    trainer = tokenizer_trainer(config)
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    state = trainer.restore(ckpt)
    step = int(jax.device_get(state.step))
    reconstruct = trainer.reconstruct_fn(config.eval.use_ema_params)

    lpips_fn = make_lpips_fn(config.eval.lpips_backbone)

    @functools.partial(compiler_options.jit, kind="convolutional")
    def image_metrics(images, reconstructions):
        x = to_unit_range(crop_padding(images, config.data.image_size, config.data.pad_to))
        y = to_unit_range(crop_padding(reconstructions, config.data.image_size, config.data.pad_to))
        return psnr(y, x), ssim(y, x), lpips_fn(reconstructions, images)

    rfid_count = config.eval.rfid_num_images
    fid_mesh = trainer.mesh if "data" in trainer.mesh.shape else None
    reference = fid_reference.reference_statistics(config, rfid_count, fid_mesh) if rfid_count else None
    rfid_images = []

    num_codes = config.quantizer.num_codes
    code_counts = np.zeros(num_codes, np.int64)
    sums = dict(psnr=0.0, ssim=0.0, lpips=0.0)
    num_images = 0
    first = None
    batches = pipeline.create_dataset(config.data, split=config.data.eval_split, train=False,
                                      global_batch_size=config.eval.batch_size, seed=config.seed)
    for local_batch in batches:
        batch = sharding.global_batch(local_batch, trainer.batch_sharding)
        recon, indices = reconstruct(state, batch["image"])
        per_image = dict(zip(("psnr", "ssim", "lpips"), image_metrics(batch["image"], recon)))
        mask = np.asarray(jax.device_get(batch["mask"])) > 0
        for name, values in per_image.items():
            sums[name] += float(np.sum(np.asarray(values)[mask]))
        if sum(len(x) for x in rfid_images) < rfid_count:
            rfid_images.append(fid_reference.to_uint8_native(np.asarray(recon)[mask], config.data))
        code_counts += np.bincount(np.asarray(indices)[mask].ravel(), minlength=num_codes)
        num_images += int(mask.sum())
        if first is None:
            first = (np.asarray(batch["image"])[:config.eval.num_grid_images],
                     np.asarray(recon)[:config.eval.num_grid_images])

    metrics = dict(step=step, **{name: total / num_images for name, total in sums.items()},
                   **codebook_statistics(code_counts), num_images=num_images)
    if reference is not None:
        rfid = fid_reference.fid_against_reference(reference, np.concatenate(rfid_images)[:rfid_count], fid_mesh)
        metrics.update(rfid=rfid["fid"], rfid_num_images=rfid_count)
    if jax.process_index() == 0:
        path = loop.save_metrics(workdir, metrics)
        reconstruction_grid(*first, os.path.join(os.path.dirname(path), f"reconstructions_{step:07d}.png"))
    return metrics
