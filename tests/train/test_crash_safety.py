"""Nothing lost on a crash: SIGKILL/SIGTERM mid-run, half-written checkpoints, retention, NaNs, locks."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqdiff.errors import UserError
from vqdiff.train import checkpoint
from vqdiff.train import tokenizer_trainer
from vqdiff.train.workdir_lock import WorkdirLock

from support import REPO, load_experiment

CONFIG = str(REPO / "experiments" / "vqvae_fashion_mnist.py") + ":tiny"


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    """Flags and environment for run.py on a fake Fashion-MNIST folder (offline, seconds to prepare)."""
    from support import write_fake_fashion_mnist
    folder = tmp_path_factory.mktemp("fmnist")
    write_fake_fashion_mnist(folder)
    data_dir = tmp_path_factory.mktemp("tfds")
    env = {**os.environ, "VQDIFF_FASHION_MNIST_DIR": str(folder), "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu",
           "PYTHONUNBUFFERED": "1"}
    flags = [f"--config={CONFIG}", f"--config.data.data_dir={data_dir}", "--config.train.num_steps=80",
             "--config.train.checkpoint_every=7", "--config.train.grid_every=1000",
             "--config.train.keep_checkpoints=100"]
    return flags, env


def start(workdir, cli_data, *extra):
    flags, env = cli_data
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *flags, f"--workdir={workdir}", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_losses(workdir) -> dict:
    """step → loss from the metrics log; a step logged twice (replayed after a resume) keeps the last."""
    losses = {}
    with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            losses[record["step"]] = record["loss"]
    return losses


def wait_for_step(workdir, step, process, timeout=300):
    path = os.path.join(workdir, "train_metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        if os.path.exists(path):
            with open(path) as f:
                lines = f.read().split("\n")[:-1]   # complete lines only: the writer may be mid-line
            if lines and json.loads(lines[-1])["step"] >= step:
                return json.loads(lines[-1])["step"]
        time.sleep(0.01)
    raise TimeoutError(f"step {step} not reached")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cli_data):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    process = start(workdir, cli_data)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return logged_losses(workdir)


def committed_steps(workdir) -> list[int]:
    """Steps whose checkpoint folder is complete (Orbax writes into a temporary name, then renames)."""
    folder = workdir / "checkpoints"
    return [int(name) for name in os.listdir(folder) if name.isdigit()] if folder.is_dir() else []


def test_sigkill_at_random_step_then_rerun_gives_the_uninterrupted_losses(tmp_path, cli_data, uninterrupted):
    kill_at = int(np.random.default_rng().integers(10, 70))
    process = start(tmp_path, cli_data)
    wait_for_step(tmp_path, kill_at, process)
    # The first checkpoint (step 10) commits in the background; on a loaded machine it can trail the log.
    deadline = time.monotonic() + 120
    while not committed_steps(tmp_path) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest = checkpoint.Checkpointer(str(tmp_path), create=False).latest_step()
    assert newest is not None and newest < 80
    rerun = start(tmp_path, cli_data)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert f"resumed from {tmp_path}/checkpoints/{newest}" in out
    resumed = logged_losses(tmp_path)
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, 81))
    np.testing.assert_allclose([resumed[s] for s in range(newest + 1, 81)],
                               [uninterrupted[s] for s in range(newest + 1, 81)], rtol=1e-6, atol=0)


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, cli_data):
    process = start(tmp_path, cli_data)
    wait_for_step(tmp_path, 10, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    saved = [l for l in out.splitlines() if l.startswith("SIGTERM received: saved step")]
    assert len(saved) == 1, out
    step = int(saved[0].split("saved step ")[1].split()[0])
    assert 10 <= step < 80
    assert checkpoint.Checkpointer(str(tmp_path), create=False).latest_step() == step


def small_state(value):
    return {"params": {"w": jnp.full((3,), value, jnp.float32)}, "step": jnp.asarray(int(value), jnp.int32)}


def test_half_written_checkpoint_is_ignored(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save(5, small_state(5.0), force=True)
    ckpt.close()
    # What a save killed mid-write leaves behind: Orbax's temporary folder of a newer step.
    os.makedirs(tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1700000000000000")
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 5
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), small_state(0.0))
    np.testing.assert_array_equal(ckpt.restore(abstract)["params"]["w"], [5.0] * 3)


def test_retention_keeps_the_last_k_and_every_mth(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2, keep_period=3)
    for step in range(1, 9):
        ckpt.save(step, small_state(float(step)), force=True)
    ckpt.close()
    assert sorted(checkpoint.Checkpointer(str(tmp_path), create=False).manager.all_steps()) == [3, 6, 7, 8]


def nan_at_step(monkeypatch, bad_step):
    """Feeds training batches whose image is NaN at `bad_step` (1-based)."""
    real = tokenizer_trainer.pipeline.create_dataset

    def create_dataset(data_config, *, train, start_step=0, **kwargs):
        stream = real(data_config, train=train, start_step=start_step, **kwargs)
        if not train:
            return stream

        def poisoned():
            for i, batch in enumerate(stream, start=start_step + 1):
                if i == bad_step:
                    batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
                yield batch
        return poisoned()
    monkeypatch.setattr(tokenizer_trainer.pipeline, "create_dataset", create_dataset)


def nan_config(**overrides):
    config = load_experiment("vqvae_fashion_mnist", "tiny")
    config.data.dataset = "mnist"
    config.train.update(num_steps=6, checkpoint_every=100, grid_every=100, **overrides)
    return config


def test_nan_batch_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 3)
    with tfds.testing.mock_data(num_examples=48):
        with pytest.raises(FloatingPointError, match="non-finite loss .* at step 3"):
            tokenizer_trainer.train(nan_config(), str(tmp_path))


def test_nan_batch_is_skipped_and_counted_when_asked(tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 3)
    with tfds.testing.mock_data(num_examples=48):
        metrics = tokenizer_trainer.train(nan_config(skip_nonfinite=True), str(tmp_path))
    assert int(metrics["skipped_steps"]) == 1
    losses = [json.loads(l) for l in open(tmp_path / "train_metrics.jsonl")]
    assert [int(r["skipped_steps"]) for r in losses] == [0, 0, 1, 1, 1, 1]
    state = jax.device_get(tokenizer_trainer.Trainer(nan_config()).restore(
        checkpoint.Checkpointer(str(tmp_path), create=False)))
    assert int(state.step) == 6 and int(state.skipped_steps) == 1
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


def test_a_second_job_on_a_locked_workdir_is_refused(tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(UserError, match=f"workdir {tmp_path} is in use by another running job "
                                            f"\\(pid {os.getpid()}\\)"):
            tokenizer_trainer.train(nan_config(), str(tmp_path))
