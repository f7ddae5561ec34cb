"""XLA:CPU compiler options for vqdiff's jitted programs: `compiler_options.jit(fn, kind, **jit_kwargs)`.

jaxlib 0.10's XLA:CPU hands dots, convolutions and reductions to YNNPACK fusions by default. Its
convolutions ran at 70–88 GFLOP/s on the autoencoder's 64-channel, 64-pixel maps on a 2-core CPU, where
XLA's other convolution path runs the same layer at 145–170 (oneDNN in PyTorch: 108–169): a convolutional
program keeps YNNPACK for dots and reductions only ("INDIVIDUAL_DOT,REDUCE"; the VQ autoencoder's training
step went from 4.6 to 4.0 s, and to 3.8 s once vqdiff.models.im2col left the kernel gradients to XLA too).
A transformer program lets YNNPACK fuse dots with their neighbours ("DOT,REDUCE"; the DiT-S/2 step 2 %
faster than the default). benchmarks/throughput.py --compiler_options=default measures a step without them.

Off the CPU backend, or on a jaxlib that does not know the option, `for_program` returns None (XLA's
defaults). `jit` also marks its function's trace, so that vqdiff.models.im2col picks convolution forms for
the convolution path the program will get (`convolutions_off_ynnpack`): a model jitted some other way (a
notebook's plain jax.jit) keeps the forms that are fast under XLA's defaults.
"""
import contextlib
import contextvars
import functools
import warnings

import jax
import jax.numpy as jnp

YNN_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
FUSION_TYPES = {
    "convolutional": ("INDIVIDUAL_DOT", "REDUCE"),
    "transformer": ("DOT", "REDUCE"),
}


def options(kind: str) -> dict:
    """The CPU compiler options of a 'convolutional' or 'transformer' program (whatever the backend)."""
    if kind not in FUSION_TYPES:
        raise ValueError(f"program kind {kind!r}: use one of {sorted(FUSION_TYPES)}")
    return {YNN_FUSION_TYPES: ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in FUSION_TYPES[kind])}


def for_program(kind: str) -> dict | None:
    """`compiler_options` for jax.jit of a `kind` program on the default backend: options(kind) on CPU, else None."""
    chosen = options(kind)
    if jax.default_backend() != "cpu" or not _accepted(tuple(chosen.items())):
        return None
    return chosen


_CONVOLUTIONS_OFF_YNNPACK = contextvars.ContextVar("vqdiff_convolutions_off_ynnpack", default=False)


def convolutions_off_ynnpack() -> bool:
    """True while `jit` traces a function whose program XLA:CPU compiles with these options (both kinds
    leave convolutions to XLA's own path)."""
    return _CONVOLUTIONS_OFF_YNNPACK.get()


@contextlib.contextmanager
def _marked(active: bool):
    token = _CONVOLUTIONS_OFF_YNNPACK.set(active)
    try:
        yield
    finally:
        _CONVOLUTIONS_OFF_YNNPACK.reset(token)


def jit(fn, kind: str, **jit_kwargs):
    """jax.jit(fn, compiler_options=for_program(kind), **jit_kwargs), with `fn` traced under
    convolutions_off_ynnpack() when the options apply."""
    options = for_program(kind)

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with _marked(options is not None):
            return fn(*args, **kwargs)
    return jax.jit(traced, compiler_options=options, **jit_kwargs)


@functools.cache
def _accepted(items) -> bool:
    """Whether this jaxlib compiles with the options (they are experimental and may be renamed)."""
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(2)).compile(dict(items))
        return True
    except Exception as error:  # noqa: BLE001 — any rejection means: use XLA's defaults
        warnings.warn(f"XLA:CPU rejected compiler options {dict(items)} ({error}); using its defaults")
        return False
