"""Two local processes joined by jax.distributed (localhost coordinator, gloo CPU collectives), one CPU
device each, train the same steps as one process over two devices: the batch split over ('data', 'fsdp'),
large parameters FSDP-split across the processes, the checkpoint saved and restored collectively."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import multiprocess_worker as worker
from support import REPO

# A hang (a process that never joins, a collective that never completes) fails the test after this long.
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(model: str, out) -> list[dict]:
    """Starts both workers, waits (bounded), returns their .npz contents by process index."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    address = f"localhost:{free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, worker.__file__, f"--model={model}", f"--out={out}", f"--coordinator_address={address}",
         "--num_processes=2", f"--process_id={i}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the two processes did not finish within {TIMEOUT_S} s:\n" +
                    "\n".join(p.communicate()[0][-3000:] for p in procs))
    for i, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"process {i} failed:\n{log[-5000:]}"
    return [dict(np.load(out / f"state_{i}.npz")) for i in range(2)]


def assert_same_arrays(got: dict, want: dict, rtol: float = 0.0, atol: float = 0.0):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)


def check_two_processes_equal_one(model: str, tmp_path, rtol: float = 0.0, atol: float = 0.0):
    results = run_two_processes(model, tmp_path / "two")
    reference = worker.train(model, jax.devices()[:2], str(tmp_path / "one" / "workdir"))
    assert any(key.startswith("trained/params") and value.size >= 1024 for key, value in reference.items())
    for result in results:
        assert int(result.pop("process_count")) == 2 and int(result.pop("local_device_count")) == 1
        assert int(result["trained/step"]) == worker.NUM_STEPS
        assert_same_arrays(result, reference, rtol, atol)
        trained = {k.removeprefix("trained/"): v for k, v in result.items() if k.startswith("trained/")}
        restored = {k.removeprefix("restored/"): v for k, v in result.items() if k.startswith("restored/")}
        assert_same_arrays(restored, trained)
    assert os.listdir(tmp_path / "two" / "workdir" / "checkpoints") == [str(worker.NUM_STEPS)]


def test_two_processes_train_like_one_process_over_two_devices(tmp_path):
    check_two_processes_equal_one("mlp", tmp_path)


@pytest.mark.slow
def test_two_processes_train_the_tiny_tokenizer_like_one_process(tmp_path):
    # XLA compiles the one-device-per-process program apart from the two-device one and may order float
    # sums (group norm, convolutions) differently: equal up to rounding, not bit for bit as the MLP.
    check_two_processes_equal_one("tokenizer", tmp_path, rtol=2e-5, atol=2e-6)   # as test_tokenizer_trainer


@pytest.mark.slow
def test_run_py_trains_in_two_processes_and_only_process_0_writes(tmp_path, fake_fashion_mnist_data_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    address = f"localhost:{free_port()}"
    workdir = tmp_path / "workdir"
    procs = [subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), f"--config={REPO / 'experiments' / 'vqvae_fashion_mnist.py'}:tiny",
         f"--workdir={workdir}", f"--config.data.data_dir={fake_fashion_mnist_data_dir}",
         "--config.mesh.shape=(1,2,1)", "--config.mesh.fsdp_min_size=1024",
         f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [proc.communicate(timeout=2 * TIMEOUT_S)[0] for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail("run.py in two processes did not finish:\n" + "\n".join(p.communicate()[0][-3000:] for p in procs))
    for i, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"process {i} failed:\n{log[-5000:]}"
        assert f"process {i} of 2, 1 of 2 devices (cpu)" in log
        assert "step 4/4" in log
    lines = (workdir / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]   # once, by process 0
    assert sorted(os.listdir(workdir / "grids")) == ["reconstructions_0000002.png", "reconstructions_0000004.png"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
