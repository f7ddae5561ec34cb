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
