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
# A 2048² eigh (FID) took 43 s with OpenBLAS's default threads beside XLA on 2 cores, 6 s with one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

from support import idx_bytes, write_fake_fashion_mnist  # noqa: E402


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory):
    """(folder, {split: (images [N, 28, 28] uint8, labels [N] uint8)}) of a 20/10 fake dataset."""
    folder = tmp_path_factory.mktemp("fake_fashion_mnist")
    return folder, write_fake_fashion_mnist(folder)


@pytest.fixture(scope="session")
def fake_fashion_mnist_data_dir(tmp_path_factory, fake_fashion_mnist):
    """A TFDS data_dir holding `fashion_mnist_local` prepared from the fake folder."""
    import tensorflow_datasets as tfds

    from vqdiff.data import fashion_mnist_local  # noqa: F401  Registers the builder.

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds.builder(
        "fashion_mnist_local", data_dir=data_dir, source_dir=str(fake_fashion_mnist[0]))
    builder.download_and_prepare()
    return data_dir


@pytest.fixture
def encode_idx():
    """`idx_bytes`, for tests that write their own IDX files."""
    return idx_bytes


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory):
    """Points vqdiff's weights cache at the session's shared folder (the one the LPIPS and Inception test
    modules convert into), so pretrained networks convert once per test session, offline."""
    from vqdiff import weights

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "vqdiff_cache"))
        yield


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A persistent XLA compilation cache for this test session only: the many runs of the same tiny
    configs (train, resume, eval) compile each step once. Fresh per session, so no stale entries."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_compilation_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    yield
