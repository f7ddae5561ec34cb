"""Test-wide setup: 8 emulated CPU devices, so sharding tests can build a data axis of 8.

XLA reads the flag once, when JAX first initialises, so it is set here before any test imports jax.
Computations that name no sharding still run on device 0 alone.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# TF (tf.data, TFDS) shares the 2 cores with XLA in tests: keep its pools small.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_experiment(name: str, variant: str = ""):
    """`get_config(variant)` of experiments/<name>.py, as run.py's --config=<file>:<variant> would."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


@pytest.fixture
def experiment():
    return load_experiment
