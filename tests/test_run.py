"""run.py as users call it: wrong flags and missing checkpoints give one line on stderr, no traceback."""
import os
import subprocess
import sys

import pytest

from support import REPO

CONFIG = str(REPO / "experiments" / "vqvae_fashion_mnist.py")


def run_cli(*args, cwd):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--config=" + CONFIG, "--workdir=W", "--config.train.num_stepz=5"], "num_stepz"),
    (["--config=" + CONFIG, "--workdir=W", "--mode=sampel"], "--mode"),
    (["--config=" + CONFIG], "--workdir"),
    (["--config=" + CONFIG + ":huge", "--workdir=W"], "unknown variant 'huge'"),
    (["--config=" + CONFIG, "--workdir=does_not_exist", "--mode=eval"], "does_not_exist does not exist"),
    (["--config=" + CONFIG, "--workdir=.", "--mode=eval"], "no checkpoint in"),
])
def test_bad_invocations_print_one_line_without_traceback(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip() and "Pass --helpshort" not in l
             and "WARNING" not in l and "I0000" not in l and "W0000" not in l]
    assert any(message in l for l in lines), result.stderr
    assert len(lines) == 1, result.stderr
