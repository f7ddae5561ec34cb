"""`--mode=sample` and `--mode=eval` of a trained latent DiT."""
import os
import time

import jax
import numpy as np

from vqdiff.errors import UserError
from vqdiff.eval import grid
from vqdiff.train import checkpoint, fid_reference, loop
from vqdiff.train.classifier_trainer import load_or_train_classifier, predict_labels
from vqdiff.train.dit_sampling import ImageGenerator, save_class_grid
from vqdiff.train.dit_trainer import DiTTrainer, load_tokenizer
from vqdiff.train.validation import validate_dit_config


def restore(config, workdir: str, trainer_class=DiTTrainer, validate=validate_dit_config):
    """(trainer, state) of the newest checkpoint in `workdir`."""
    validate(config)
    trainer = trainer_class(config, load_tokenizer(config))
    return trainer, trainer.restore(checkpoint.Checkpointer(workdir, create=False))


def requested_labels(sample_config, num_classes: int) -> np.ndarray:
    """`sample.labels` (class ids) or, when empty, `num_samples` labels cycling through every class."""
    labels = np.asarray(list(sample_config.labels) or np.arange(sample_config.num_samples) % num_classes,
                        np.int32)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise UserError(f"config.sample.labels has {bad.tolist()}: class ids run from 0 to {num_classes - 1}")
    return labels


def sample(config, workdir: str) -> dict:
    """Draws `config.sample` images → `<workdir>/samples/samples_<step>.png` (grid) and `.npz`
    (uint8 `images` [N, H, W, C], `labels` [N]); returns a summary dict."""
    trainer, state = restore(config, workdir)
    step = int(jax.device_get(state.step))
    labels = requested_labels(config.sample, config.model.num_classes)
    started = time.perf_counter()
    images = ImageGenerator(trainer, config.sample)(state, labels, seed=config.sample.seed)
    seconds = time.perf_counter() - started
    stem = os.path.join(workdir, "samples", f"samples_{step:07d}")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    np.savez(stem + ".npz", images=images, labels=labels)
    columns = int(np.ceil(np.sqrt(len(images)))) if config.sample.labels else config.model.num_classes
    grid.save_grid(images, stem + ".png", columns, scale=2)
    return dict(step=step, num_samples=len(images), png=stem + ".png", npz=stem + ".npz",
                seconds=round(seconds, 1))


def score_samples(config, trainer, draw, classes) -> dict:
    """Draws the samples (`draw()` → uint8 images) and scores them: FID, precision and recall against the
    first `config.eval.fid_reference_images` eval images (statistics cached) and `accuracy`, the share the
    real-data classifier assigns to `classes` [N]. The reference and classifier come first, so that a
    problem with them shows before the sampling time is spent."""
    fid_mesh = trainer.mesh if "data" in trainer.mesh.shape else None
    reference = fid_reference.reference_statistics(config, config.eval.fid_reference_images, fid_mesh)
    classifier, classifier_params, classifier_accuracy = load_or_train_classifier(config)
    started = time.perf_counter()
    images = draw()
    print(f"sampled {len(images)} images in {time.perf_counter() - started:.0f} s", flush=True)
    scores = fid_reference.fid_against_reference(reference, images, fid_mesh)
    predicted = predict_labels(classifier, classifier_params, images)
    return dict(scores, accuracy=float(np.mean(predicted == classes)), classifier_accuracy=classifier_accuracy,
                images=images)


def evaluate(config, workdir: str) -> dict:
    """FID, precision and recall of `config.eval.num_samples` class-balanced samples against the first
    `config.eval.fid_reference_images` eval images (statistics cached), and `cond_accuracy`: the share
    of samples the real-data classifier assigns to their requested class. Writes
    `<workdir>/eval/metrics_<step>.json` and a per-class grid beside it."""
    trainer, state = restore(config, workdir)
    step = int(jax.device_get(state.step))
    e = config.eval
    num_classes = config.model.num_classes
    labels = np.arange(e.num_samples, dtype=np.int32) % num_classes
    draw = lambda: ImageGenerator(trainer, config.sample)(state, labels, seed=e.seed)
    scores = score_samples(config, trainer, draw, labels)
    images = scores.pop("images")
    metrics = dict(step=step, fid=scores["fid"], precision=scores["precision"], recall=scores["recall"],
                   cond_accuracy=scores["accuracy"], num_samples=len(images),
                   fid_reference_images=e.fid_reference_images, classifier_accuracy=scores["classifier_accuracy"],
                   guidance_scale=config.sample.guidance_scale, sampling_steps=config.sample.num_steps)
    if jax.process_index() == 0:
        path = loop.save_metrics(workdir, metrics)
        per_class = min(10, e.num_samples // num_classes)
        order = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
        save_class_grid(images[order], per_class, os.path.join(os.path.dirname(path), f"classes_{step:07d}.png"))
    return metrics

