"""The plain training loop every trainer shares: resume, update, log, grid, checkpoint, stop cleanly.

A trainer object provides `initial_state()`, `restore(checkpointer)`, `compiled_train_step()` and
`batch_sharding`, and may provide `compiled_train_phases()` → [(first step, update)] when different steps
take different updates (the VQGAN's before and after its discriminator starts); the caller provides the
batches and what to draw at each grid interval.
"""
import json
import os
import signal
from typing import Callable, Iterator

import jax
import numpy as np

from vqdiff.train import checkpoint, progress, sharding
from vqdiff.train.workdir_lock import WorkdirLock


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (save, then exit cleanly)."""

    def __init__(self):
        self.received = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """Appends one JSON line {"step": ..., metrics...} per logged step (process 0), flushed at once so
    that a killed run keeps every line it logged."""

    def __init__(self, path: str):
        self.file = open(path, "a") if jax.process_index() == 0 else None

    def write(self, step: int, scalars: dict):
        if self.file:
            self.file.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def check_finite(step: int, metrics: dict):
    """Raises FloatingPointError naming the step and the metric when the loss or gradient is NaN/Inf."""
    for name in ("loss", "grad_norm"):
        value = float(metrics[name])
        if not np.isfinite(value):
            raise FloatingPointError(
                f"non-finite {name} ({value}) at step {step}; the last checkpoint is intact. Lower "
                f"config.train.learning_rate, check the data, or set config.train.skip_nonfinite=True to "
                f"skip such updates")


def save_config(config, workdir: str):
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def train_in_workdir(config, workdir: str, body: Callable[[], dict]) -> dict:
    """Creates `workdir`, holds its lock, writes config.json, then runs `body`."""
    os.makedirs(workdir, exist_ok=True)
    with WorkdirLock(workdir):
        save_config(config, workdir)
        return body()


def train_phases(trainer) -> list:
    """[(first step, compiled update)] sorted by first step: the trainer's phases, or one from step 0."""
    if hasattr(trainer, "compiled_train_phases"):
        return sorted(trainer.compiled_train_phases(), key=lambda phase: phase[0])
    return [(0, trainer.compiled_train_step())]


def run_loop(config, workdir: str, trainer, *, make_batches: Callable[[int], Iterator[dict]],
             draw_grid: Callable[[object, int], None], progress_keys: tuple[str, ...],
             prepare_state: Callable = lambda state: state) -> dict:
    """Trains `trainer`'s state from the newest checkpoint in `workdir` to `config.train.num_steps`.

    make_batches(start_step) → iterator of host batches (resumed runs start where they left off);
    draw_grid(state, step) saves the grid of that step; prepare_state(state) adjusts a fresh state
    before the first step (e.g. stores data statistics). Returns the last step's metrics.
    """
    tc = config.train
    ckpt = checkpoint.Checkpointer(workdir, max_to_keep=tc.keep_checkpoints, keep_period=tc.keep_every)
    start = ckpt.latest_step()
    state = trainer.restore(ckpt, start) if start is not None else prepare_state(trainer.initial_state())
    start = start or 0
    if start:
        print(f"resumed from {ckpt.directory}/{start}", flush=True)
    if start >= tc.num_steps:
        print(f"already trained: step {start} >= config.train.num_steps={tc.num_steps}", flush=True)
        ckpt.close()
        return {}

    data = make_batches(start)
    phases = train_phases(trainer)
    writer = progress.create_writer(os.path.join(workdir, "tensorboard"))
    log = MetricsLog(os.path.join(workdir, "train_metrics.jsonl"))
    report = progress.Progress(start, tc.num_steps, tc.batch_size)
    stop = StopSignal()
    check = (lambda *a: None) if tc.skip_nonfinite else check_finite
    previous = None   # (step, metrics) of the step before: read one step late so the host never waits
    try:
        for step in range(start, tc.num_steps):
            batch = sharding.global_batch(next(data), trainer.batch_sharding)
            update = next(update for first, update in reversed(phases) if step >= first)
            state, metrics = update(state, batch)
            if previous is not None:
                check(*previous)
            previous = (step + 1, metrics)
            done = step + 1
            if done % tc.log_every == 0 or done == tc.num_steps:
                scalars = jax.device_get(metrics)
                writer.write_scalars(done, scalars)
                log.write(done, scalars)
                print(report.line(done, scalars, progress_keys), flush=True)
            if done % tc.grid_every == 0 or done == tc.num_steps:
                draw_grid(state, done)
            if done % tc.checkpoint_every == 0 or done == tc.num_steps or stop.received:
                check(*previous)
                ckpt.save(done, state.as_dict(), force=True)
            if stop.received:
                print(f"{stop.received} received: saved step {done} to {ckpt.directory}; exiting", flush=True)
                break
        check(*previous)
        return jax.device_get(previous[1])
    finally:
        stop.restore()
        ckpt.close()
        writer.close()
        log.close()


def save_metrics(workdir: str, metrics: dict) -> str:
    """Writes `<workdir>/eval/metrics_<step>.json`."""
    path = os.path.join(workdir, "eval", f"metrics_{int(metrics['step']):07d}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    return path
