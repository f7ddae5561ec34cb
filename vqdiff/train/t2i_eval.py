"""`--mode=sample` (prompts → images) and `--mode=eval` (FID and prompt accuracy) of a text-to-image DiT."""
import json
import os
import time

import jax
import numpy as np

from vqdiff.errors import UserError
from vqdiff.eval import grid
from vqdiff.train import dit_eval, loop, text_conditioning
from vqdiff.train.dit_sampling import ImageGenerator, save_class_grid
from vqdiff.train.t2i_trainer import TextToImageTrainer, grid_prompts, prompt_table
from vqdiff.train.validation import validate_t2i_config


def restore(config, workdir: str):
    return dit_eval.restore(config, workdir, TextToImageTrainer, validate_t2i_config)


def requested_prompts(config) -> list[str]:
    """`sample.prompts`, or `num_samples` prompts cycling through the grid prompts (class templates: one
    held-out prompt per class)."""
    if config.sample.prompts:
        return [str(p) for p in config.sample.prompts]
    one_each = grid_prompts(config, 1)
    return [one_each[i % len(one_each)] for i in range(config.sample.num_samples)]


def sample(config, workdir: str) -> dict:
    """Draws one image per prompt → `<workdir>/samples/samples_<step>.png` (grid, prompts row-major) and
    `.npz` (uint8 `images` [N, H, W, C]) with `.json` (the prompts); returns a summary dict."""
    trainer, state = restore(config, workdir)
    step = int(jax.device_get(state.step))
    prompts = requested_prompts(config)
    table, index = prompt_table(trainer.caption_encoder, prompts)
    started = time.perf_counter()
    images = ImageGenerator(trainer, config.sample)(state, index, seed=config.sample.seed, captions=table)
    seconds = time.perf_counter() - started
    stem = os.path.join(workdir, "samples", f"samples_{step:07d}")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    np.savez(stem + ".npz", images=images)
    with open(stem + ".json", "w") as f:
        json.dump(prompts, f, indent=1)
    columns = int(np.ceil(np.sqrt(len(images)))) if config.sample.prompts else len(grid_prompts(config, 1))
    grid.save_grid(images, stem + ".png", columns, scale=2)
    return dict(step=step, num_samples=len(images), png=stem + ".png", npz=stem + ".npz",
                prompts=stem + ".json", seconds=round(seconds, 1))


def evaluate(config, workdir: str) -> dict:
    """FID, precision and recall of `config.eval.num_samples` samples whose prompts cycle through every
    caption of `config.eval.prompt_templates` (held-out templates by default), and `prompt_accuracy`: the
    share the real-data classifier assigns to the prompt's class. Writes `<workdir>/eval/metrics_<step>.json`
    and a grid with one row per class beside it."""
    if config.text.captions != "class_templates":
        raise UserError(f"--mode=eval scores prompt accuracy with the class classifier, so it needs "
                        f"config.text.captions='class_templates', not {config.text.captions!r}; draw "
                        f"samples with --mode=sample")
    trainer, state = restore(config, workdir)
    step = int(jax.device_get(state.step))
    e = config.eval
    prompts, prompt_classes = text_conditioning.class_prompts(config.text.class_names, e.prompt_templates)
    index = np.arange(e.num_samples, dtype=np.int32) % len(prompts)
    classes = prompt_classes[index]
    table = trainer.caption_encoder.table(prompts)
    draw = lambda: ImageGenerator(trainer, config.sample)(state, index, seed=e.seed, captions=table)
    scores = dit_eval.score_samples(config, trainer, draw, classes)
    images = scores.pop("images")
    metrics = dict(step=step, fid=scores["fid"], precision=scores["precision"], recall=scores["recall"],
                   prompt_accuracy=scores["accuracy"], num_samples=len(images),
                   fid_reference_images=e.fid_reference_images, classifier_accuracy=scores["classifier_accuracy"],
                   prompt_templates=e.prompt_templates, guidance_scale=config.sample.guidance_scale,
                   sampling_steps=config.sample.num_steps)
    if jax.process_index() == 0:
        path = loop.save_metrics(workdir, metrics)
        num_classes = len(config.text.class_names)
        per_class = min(10, e.num_samples // num_classes)
        order = np.concatenate([np.flatnonzero(classes == c)[:per_class] for c in range(num_classes)])
        save_class_grid(images[order], per_class, os.path.join(os.path.dirname(path), f"prompts_{step:07d}.png"))
    return metrics
