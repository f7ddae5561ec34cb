"""Forward and gradient cost of the autoencoder's layers on CPU, per convolution form of vqdiff.models.im2col.

    nice -n 19 python benchmarks/autoencoder_layer_cost.py --batch=16 --repeats=5 [--peer=torch]

Shapes are those of benchmarks/throughput.py's autoencoder (64×64 RGB, channels 64/128/256, one residual
block per level, nearest + conv upsampling). Each variant is jitted once; the variants of one layer run
in alternation `repeats` times and the fastest time of each is kept (the machine is shared, so only
ratios taken in one run mean anything). 'grad' is the gradient with respect to input and parameters.
Besides the convolution forms: GroupNorm + swish as nn.GroupNorm against vqdiff.models.group_norm, and the
nearest-upsampling convolution as upsample-then-convolve against vqdiff.models.nearest_upsample_conv.
Programs compile with the trainers' XLA:CPU options (vqdiff.compiler_options, 'convolutional': no YNNPACK
convolutions); --compiler_options=default times XLA's defaults. With --peer=torch each convolution row adds
torch.nn.functional.conv2d (NCHW, same threads) forward and forward+backward, timed in the same rounds.
Prints one JSON line per layer: ms per call (and GFLOP/s of the forward convolution arithmetic).
"""
import argparse
import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vqdiff import compiler_options  # noqa: E402
from vqdiff.models.autoencoder import AttentionBlock  # noqa: E402
from vqdiff.models.group_norm import GroupNorm  # noqa: E402
from vqdiff.models.im2col import FORMS, conv2d_im2col, conv2d_tap_grad, conv2d_xla  # noqa: E402
from vqdiff.models.nearest_upsample_conv import nearest_upsample_conv3x3  # noqa: E402

# (name, size, in channels, out channels, kernel, stride) of every distinct convolution in the model.
CONVS = [
    ("conv3x3 64px 3→64", 64, 3, 64, 3, 1),
    ("conv3x3 64px 64→64", 64, 64, 64, 3, 1),
    ("conv3x3 64px 128→128 (upsample)", 64, 128, 128, 3, 1),
    ("conv3x3 64px 128→64", 64, 128, 64, 3, 1),
    ("conv3x3 64px 64→3", 64, 64, 3, 3, 1),
    ("conv3x3 s2 65px 64→64", 65, 64, 64, 3, 2),
    ("conv3x3 32px 64→128", 32, 64, 128, 3, 1),
    ("conv3x3 32px 128→128", 32, 128, 128, 3, 1),
    ("conv3x3 32px 256→256 (upsample)", 32, 256, 256, 3, 1),
    ("conv3x3 32px 256→128", 32, 256, 128, 3, 1),
    ("conv3x3 s2 33px 128→128", 33, 128, 128, 3, 2),
    ("conv3x3 16px 128→256", 16, 128, 256, 3, 1),
    ("conv3x3 16px 256→256", 16, 256, 256, 3, 1),
    ("conv3x3 16px 3→256", 16, 3, 256, 3, 1),
    ("conv3x3 16px 256→3", 16, 256, 3, 3, 1),
    ("conv1x1 64px 128→64", 64, 128, 64, 1, 1),
]
NORMS = [(64, 64), (64, 128), (32, 128), (32, 256), (16, 256)]
UPSAMPLES = [(16, 256), (32, 128)]   # (input size, channels) of the nearest-upsampling convolutions


OPTIONS = {"kind": None}   # 'convolutional' with --compiler_options=vqdiff (set by main)


def timed(fns, args, repeats, peers=None):
    """{name: best seconds} of jitted fns on args and of `peers` ({name: () → None}), run in alternation."""
    kind = OPTIONS["kind"]
    runs = {name: functools.partial(compiler_options.jit(fn, kind) if kind else jax.jit(fn), *args)
            for name, fn in fns.items()}
    runs.update(peers or {})
    for run in runs.values():
        jax.block_until_ready(run())
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def torch_conv_runs(batch, size, cin, cout, k, stride):
    """{'torch fwd': …, 'torch grad': …}: conv2d of the same shape in PyTorch (NCHW), as () → None."""
    import torch

    x = torch.randn(batch, cin, size, size, requires_grad=True)
    weight = torch.randn(cout, cin, k, k) * 0.05
    weight.requires_grad_(True)
    padding = 0 if stride > 1 else k // 2

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding)

    def grad():
        x.grad = weight.grad = None
        (torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding).square().sum() * 0.5e-3).backward()
    return {"torch fwd": forward, "torch grad": grad}


def forward_and_grad(forward):
    """{'fwd': forward, 'grad': d ½·sum(forward²)·1e-3 / d(all args)}. The cotangent is the output itself: a
    constant one (d sum(forward)) lets XLA fold the backward convolutions into cheap window sums."""
    def grad(*args):
        return jax.grad(lambda *a: 0.5e-3 * jnp.sum(jnp.square(forward(*a))), argnums=tuple(range(len(args))))(*args)
    return {"fwd": forward, "grad": grad}


def conv_rows(batch, repeats, peer=""):
    rng = np.random.default_rng(0)
    for name, size, cin, cout, k, stride in CONVS:
        x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.05, jnp.float32)
        padding = ((0, 0), (0, 0)) if stride > 1 else ((k // 2, k // 2),) * 2
        forms = dict(xla=conv2d_xla, im2col=conv2d_im2col, tap_grad=conv2d_tap_grad)
        if stride > 1:
            del forms["tap_grad"]   # stride 1 only
        variants = {f"{form} {mode}": f for form, conv in forms.items() for mode, f in
                    forward_and_grad(lambda a, b, conv=conv: conv(a, b, (stride, stride), padding)).items()}
        peers = torch_conv_runs(batch, size, cin, cout, k, stride) if peer == "torch" else None
        best = timed(variants, (x, kernel), repeats, peers)
        out = (size - k + sum(padding[0])) // stride + 1
        flops = 2 * batch * out * out * k * k * cin * cout
        forms = [*forms, *(["torch"] if peers else [])]
        yield dict(layer=name, **{f"{v} ms": round(s * 1e3, 2) for v, s in best.items()},
                   **{f"{form} fwd GFLOP/s": round(flops / best[f"{form} fwd"] / 1e9, 1) for form in forms})


def norm_rows(batch, repeats):
    """GroupNorm + swish: nn.GroupNorm against vqdiff's (per-channel sums), the same params."""
    rng = np.random.default_rng(1)
    for size, channels in NORMS:
        x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
        norms = {"nn.GroupNorm": nn.GroupNorm(num_groups=32, epsilon=1e-6), "vqdiff": GroupNorm(num_groups=32)}
        params = norms["vqdiff"].init(jax.random.key(0), x)
        variants = {f"{name} {m}": f for name, norm in norms.items() for m, f in
                    forward_and_grad(lambda p, a, norm=norm: nn.swish(norm.apply(p, a))).items()}
        best = timed(variants, (params, x), repeats)
        yield dict(layer=f"groupnorm+swish {size}px {channels}",
                   **{f"{v} ms": round(s * 1e3, 2) for v, s in best.items()})


def upsample_rows(batch, repeats):
    """×2 nearest upsampling + 3×3 conv: upsample then convolve (tap_grad) against the phase form."""
    rng = np.random.default_rng(3)
    for size, channels in UPSAMPLES:
        x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(3, 3, channels, channels)) * 0.05, jnp.float32)
        forms = {
            "upsample then conv": lambda a, k: conv2d_tap_grad(jnp.repeat(jnp.repeat(a, 2, 1), 2, 2), k, (1, 1),
                                                               ((1, 1), (1, 1))),
            "phases": lambda a, k: nearest_upsample_conv3x3(a, k, FORMS["tap_grad"])}
        variants = {f"{name} {m}": f for name, form in forms.items() for m, f in forward_and_grad(form).items()}
        best = timed(variants, (x, kernel), repeats)
        yield dict(layer=f"nearest upsample + conv3x3 {size}→{2 * size}px {channels}",
                   **{f"{v} ms": round(s * 1e3, 2) for v, s in best.items()})


def attention_rows(batch, repeats):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 16, 16, 256)), jnp.float32)
    block = AttentionBlock(norm_groups=32)
    params = block.init(jax.random.key(0), x)
    best = timed({f"attention {m}": f for m, f in forward_and_grad(block.apply).items()}, (params, x), repeats)
    yield dict(layer="attention 16px 256", **{f"{v} ms": round(s * 1e3, 2) for v, s in best.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("", "conv", "norm", "upsample", "attention"), default="")
    parser.add_argument("--compiler_options", choices=("vqdiff", "default"), default="vqdiff")
    parser.add_argument("--peer", choices=("", "torch"), default="", help="torch: conv2d rows beside ours")
    args = parser.parse_args()
    if args.compiler_options == "vqdiff":
        OPTIONS["kind"] = "convolutional"
    if args.peer:
        import torch
        torch.set_num_threads(os.cpu_count())
    kinds = (("conv", functools.partial(conv_rows, peer=args.peer)), ("norm", norm_rows),
             ("upsample", upsample_rows), ("attention", attention_rows))
    for kind, rows in kinds:
        if args.only in ("", kind):
            for row in rows(args.batch, args.repeats):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
