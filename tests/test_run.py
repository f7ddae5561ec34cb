"""run.py as users call it: wrong flags and missing checkpoints give one line on stderr, no traceback."""
import os
import re
import subprocess
import sys

import pytest

from support import REPO

CONFIG = str(REPO / "experiments" / "vqvae_fashion_mnist.py")


def run_cli(*args, cwd):
    """run.py with `args`, its TFDS data_dir in `cwd`; '--env=missing_idx' points the Fashion-MNIST
    folder at an empty directory instead of passing a flag."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    if "--env=missing_idx" in args:
        args = [a for a in args if a != "--env=missing_idx"]
        env["VQDIFF_FASHION_MNIST_DIR"] = str(cwd / "empty")
    if any(a.startswith("--workdir") for a in args):
        args = [*args, f"--config.data.data_dir={cwd / 'tfds'}"]
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--config=" + CONFIG, "--workdir=W", "--config.train.num_stepz=5"], "num_stepz"),
    (["--config=" + CONFIG, "--workdir=W", "--mode=sampel"], "--mode"),
    (["--config=" + CONFIG], "--workdir"),
    (["--config=" + CONFIG + ":huge", "--workdir=W"], "unknown variant 'huge'"),
    (["--config=" + CONFIG, "--workdir=does_not_exist", "--mode=eval"], "does_not_exist does not exist"),
    (["--config=" + CONFIG, "--workdir=.", "--mode=eval"], "no checkpoint in"),
    (["--config=" + CONFIG, "--workdir=W", "--config.train.num_steps=abc"], "num_steps"),
    (["--config=" + CONFIG, "--workdir=W", "--config.trainer=gan"], "config.trainer='gan'"),
    (["--config=" + CONFIG, "--workdir=W", "--config.data.channels=2"], "config.data.channels=2"),
    (["--config=" + CONFIG, "--workdir=W", "--config.data.pad_to=30"], "not divisible by the downsampling"),
    (["--config=" + CONFIG, "--workdir=W", "--config.data.pad_to=20"], "smaller than config.data.image_size"),
    (["--config=" + CONFIG, "--workdir=W", "--config.train.batch_size=0"], "batch_size=0 must be positive"),
    (["--config=" + CONFIG, "--workdir=W", "--config.mesh.shape=(3,1,1)"], "needs 3 devices"),
    (["--config=" + CONFIG, "--workdir=W", "--config.model.upsample=bilinear"], "upsample='bilinear'"),
    (["--config=" + CONFIG, "--workdir=W", "--config.train.reconstruction_loss=l3"], "reconstruction_loss='l3'"),
    (["--config=" + CONFIG, "--workdir=W", "--config.quantizer.ema_decay=1.5"], "ema_decay=1.5"),
    (["--config=" + CONFIG, "--workdir=W", "--config.model.norm_groups=7"], "norm_groups=7"),
    (["--config=" + CONFIG, "--workdir=W", "--config.data.dataset=no_such_dataset"], "no_such_dataset"),
    (["--config=" + CONFIG, "--workdir=W", "--env=missing_idx"], "apt-get install dataset-fashion-mnist"),
])
def test_bad_invocations_print_one_line_without_traceback(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # Library log lines (glog format 'W1123 11:15:17.77 ...', TF's 'WARNING: All log messages ...')
    # may precede the error; the error itself must be one line.
    lines = [l for l in result.stderr.splitlines() if l.strip() and "Pass --helpshort" not in l
             and not l.startswith("WARNING") and not re.match(r"[IW]\d{4} ", l)]
    assert any(message in l for l in lines), result.stderr
    assert len(lines) == 1, result.stderr
