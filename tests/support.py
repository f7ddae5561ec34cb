"""Helpers shared by the tests: experiment configs, and IDX files / a fake Debian Fashion-MNIST folder."""
import gzip
import importlib.util
import pathlib
import struct

import numpy as np

# numpy dtype → IDX element type code.
_TYPE_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B,
               np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}

FAKE_SIZES = {"train": 20, "test": 10}
FAKE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of `array`, built from the format's description with struct."""
    header = struct.pack(">BBBB", 0, 0, _TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fake_fashion_mnist(folder, seed: int = 0) -> dict:
    """Writes Debian's four gzip IDX files with random content; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in FAKE_SIZES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        for name, array in zip(FAKE_FILES[split], (images, labels)):
            (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
        arrays[split] = (images, labels)
    return arrays


REPO = pathlib.Path(__file__).resolve().parents[1]


def load_experiment(name: str, variant: str = ""):
    """`get_config(variant)` of experiments/<name>.py, as run.py's --config=<file>:<variant> would."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def random_dit_state(config, model, tx, latent_shape):
    """A DiT training state with every parameter drawn at random (non-zero adaLN and output layers, so
    that every parameter gets a gradient); built from shapes, so nothing but the steps compiles."""
    import jax
    import jax.numpy as jnp

    from vqdiff.train import dit_trainer

    abstract = jax.eval_shape(lambda: dit_trainer.init_state(config, model, tx, latent_shape))
    leaves, treedef = jax.tree.flatten(abstract.params)
    rng = np.random.default_rng(0)
    params = jax.tree.unflatten(treedef, [jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype) for p in leaves])
    stats = dict(mean=jnp.zeros((latent_shape[-1],), jnp.float32), scale=jnp.ones((), jnp.float32))
    return abstract.replace(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                            ema_params=params, model_state={"latent_stats": stats},
                            skipped_steps=jnp.zeros((), jnp.int32))
