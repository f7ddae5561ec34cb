"""Cost of the VQGAN's training steps beside one VQ-VAE step, and the VQGAN step count of equal wall clock.

    python benchmarks/vqgan_step_cost.py --rounds 10

Both trainers come from the experiments' default configs (experiments/vqvae_fashion_mnist.py and
experiments/vqgan_fashion_mnist.py), compiled for one device with the configs' batch size, on synthetic
images in [-1, 1]. The VQGAN has two steps: the one the loop runs before `config.gan.start_step`
(no discriminator) and the full one after it; both are timed. Rounds alternate between the three after an
untimed warm-up each (machine speed drifts, so only numbers from one run are compared). Prints one JSON
line with ms per step, each VQGAN step's ratio to the VQ-VAE's, and `vqgan_steps_for_vqvae_budget`: the
num_steps whose wall clock (start_step steps before the start, the rest after) equals the VQ-VAE's
num_steps.
"""
import argparse
import importlib.util
import json
import os
import time

import jax
import numpy as np

from vqdiff.train import sharding
from vqdiff.train.tokenizer_trainer import Trainer
from vqdiff.train.vqgan_trainer import VQGANTrainer

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")


def load_config(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def stepper(trainer, config, **step_kwargs):
    """A () → None that runs one compiled update on a fixed batch and waits for it."""
    update = trainer.compiled_train_step(**step_kwargs)
    size = config.data.pad_to or config.data.image_size
    rng = np.random.default_rng(0)
    batch = dict(image=rng.uniform(-1, 1, (config.train.batch_size, size, size, config.data.channels)).astype(np.float32),
                 label=np.zeros(config.train.batch_size, np.int32), mask=np.ones(config.train.batch_size, np.float32))
    batch = sharding.global_batch(batch, trainer.batch_sharding)
    box = [trainer.initial_state()]
    if step_kwargs.get("with_discriminator", False):  # time the full step with the adversarial half on
        box[0] = box[0].replace(step=box[0].step + config.gan.start_step)

    def run():
        box[0], metrics = update(box[0], batch)
        jax.block_until_ready(metrics)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps_per_round", type=int, default=5)
    args = parser.parse_args()

    vqvae_config, vqgan_config = load_config("vqvae_fashion_mnist"), load_config("vqgan_fashion_mnist")
    devices = jax.devices()[:1]
    vqgan = VQGANTrainer(vqgan_config, devices)
    runs = dict(vqvae=stepper(Trainer(vqvae_config, devices), vqvae_config),
                vqgan_before_start=stepper(vqgan, vqgan_config, with_discriminator=False),
                vqgan_full=stepper(vqgan, vqgan_config, with_discriminator=True))
    for run in runs.values():
        run()
    seconds = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                run()
            seconds[name] += time.perf_counter() - start
    steps = args.rounds * args.steps_per_round
    ms = {name: 1e3 * s / steps for name, s in seconds.items()}
    before, full = ms["vqgan_before_start"] / ms["vqvae"], ms["vqgan_full"] / ms["vqvae"]
    start_step = vqgan_config.gan.start_step
    budget = vqvae_config.train.num_steps   # in VQ-VAE steps
    print(json.dumps(dict(
        device=str(devices[0].device_kind), batch_size=vqgan_config.train.batch_size, steps=steps,
        **{f"{name}_ms_per_step": round(value, 2) for name, value in ms.items()},
        before_start_ratio=round(before, 3), full_ratio=round(full, 3),
        vqvae_num_steps=budget, vqgan_start_step=start_step,
        vqgan_steps_for_vqvae_budget=int(start_step + (budget - start_step * before) / full))))

if __name__ == "__main__":
    main()
