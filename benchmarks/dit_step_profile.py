"""The Fashion-MNIST DiT's training step with and without the residual-gradient barrier, and where its time goes.

    python benchmarks/dit_step_profile.py                       # the default experiment's shapes
    python benchmarks/dit_step_profile.py --depth=12 --hidden_size=384 --num_heads=6 --latent=32 --batch=16

Both steps are the real jitted `dit_trainer.train_step` (forward, v-loss, gradients, AdamW, EMA); "plain"
replaces `dit.residual_gradient_barrier` by the identity, which is what the model was before it. Rounds
alternate between the two after a warm-up. With --profile, a jax.profiler trace of each step is summed
per XLA fusion kind (the name without its number), which is how the barrier's target showed up:
`copy_bitcast_fusion`s that recompute the residual stream's gradient inside every kernel-gradient transpose.

Prints one JSON line: ms_per_step and images_per_sec of both, ratio = plain time / barrier time, GFLOP/s
(XLA's cost analysis ÷ time), and with --profile the top fusion kinds of each in ms per step.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vqdiff.diffusion.schedules import make_schedule  # noqa: E402
from vqdiff.experiment_files import sibling_config  # noqa: E402
from vqdiff.models import dit  # noqa: E402
from vqdiff.train import dit_trainer  # noqa: E402
from vqdiff.train.optimizer import create_optimizer  # noqa: E402

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")


def build_step(config, latent_shape, batch_size):
    """(compiled step, state, batch, FLOPs per step) for the current `dit.residual_gradient_barrier`."""
    model = dit_trainer.build_dit(config, latent_shape)
    tx = create_optimizer(config.train)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    # Copies: the initial EMA params are the params themselves, and the step donates the state.
    state = jax.tree.map(jnp.array, dit_trainer.init_state(config, model, tx, latent_shape))
    rng = np.random.default_rng(0)
    batch = dict(latent=jnp.asarray(rng.standard_normal((batch_size, *latent_shape)), jnp.float32),
                 label=jnp.asarray(rng.integers(0, config.model.num_classes, batch_size), jnp.int32),
                 mask=jnp.ones((batch_size,), jnp.float32))

    def step(state, batch):
        return dit_trainer.train_step(state, batch, None, model=model, tx=tx, schedule=schedule, config=config,
                                      tokenizer_model=None)
    compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return compiled, state, batch, float(cost.get("flops", 0.0))


def time_steps(compiled, state, batch, count):
    start = time.perf_counter()
    for _ in range(count):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - start) / count


def fusion_kinds(compiled, state, batch, steps=3, top=6):
    """{fusion kind: ms per step} of the `top` most expensive kinds in a profiler trace."""
    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        state, _ = time_steps(compiled, state, batch, steps)
        jax.profiler.stop_trace()
        events = json.load(gzip.open(glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    total = collections.Counter()
    for event in events:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith(("$", "Thunk", "Pjit", "Slinky", "Common")):
            total[re.sub(r"\.\d+$", "", name)] += event["dur"]
    return state, {kind: round(us / steps / 1e3, 1) for kind, us in total.most_common(top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int)
    parser.add_argument("--hidden_size", type=int)
    parser.add_argument("--num_heads", type=int)
    parser.add_argument("--patch_size", type=int)
    parser.add_argument("--latent", type=int, default=8, help="latent side (8: the Fashion-MNIST tokenizer)")
    parser.add_argument("--batch", type=int, help="default: the experiment's batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps_per_round", type=int, default=10)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    config = sibling_config(os.path.join(EXPERIMENTS, "dit_fashion_mnist.py"), "dit_fashion_mnist")
    for key in ("depth", "hidden_size", "num_heads", "patch_size"):
        if getattr(args, key) is not None:
            config.model[key] = getattr(args, key)
    batch_size = args.batch or config.train.batch_size
    latent_shape = (args.latent, args.latent, 4)

    barrier = dit.residual_gradient_barrier
    runs = {}
    for name, fn in (("barrier", barrier), ("plain", lambda x: x)):
        dit.residual_gradient_barrier = fn
        runs[name] = list(build_step(config, latent_shape, batch_size))
    dit.residual_gradient_barrier = barrier

    times = {name: [] for name in runs}
    for name, run in runs.items():   # warm-up
        run[1], _ = time_steps(run[0], run[1], run[2], 2)
    for _ in range(args.rounds):
        for name, run in runs.items():
            run[1], seconds = time_steps(run[0], run[1], run[2], args.steps_per_round)
            times[name].append(seconds)

    result = dict(model={k: config.model[k] for k in ("depth", "hidden_size", "num_heads", "patch_size")},
                  latent_shape=latent_shape, batch=batch_size, device=jax.devices()[0].platform)
    for name, run in runs.items():
        seconds = float(np.mean(times[name]))
        result[name] = dict(ms_per_step=round(seconds * 1e3, 1), images_per_sec=round(batch_size / seconds, 1),
                            gflops_per_sec=round(run[3] / seconds / 1e9, 1))
        if args.profile:
            run[1], result[name]["top_fusion_kinds_ms"] = fusion_kinds(run[0], run[1], run[2])
    result["ratio"] = round(result["plain"]["ms_per_step"] / result["barrier"]["ms_per_step"], 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
