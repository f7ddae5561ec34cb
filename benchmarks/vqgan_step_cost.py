"""Cost of one VQGAN training step beside one VQ-VAE step, and the VQGAN step count of equal wall clock.

    python benchmarks/vqgan_step_cost.py --rounds 10

Both trainers come from the experiments' default configs (experiments/vqvae_fashion_mnist.py and
experiments/vqgan_fashion_mnist.py), compiled for one device with the configs' batch size, on synthetic
images in [-1, 1]. The VQGAN step is timed after its discriminator start (before the start it runs the same
ops; see vqdiff/train/vqgan_trainer.py). Rounds alternate between the two after an untimed warm-up each
(machine speed drifts, so only numbers from one run are compared). Prints one JSON line with ms per step,
ratio = VQGAN / VQ-VAE, and `vqgan_steps_for_vqvae_budget` = the VQ-VAE's num_steps / ratio.
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


def stepper(trainer, config):
    """A () → None that runs one compiled update on a fixed batch and waits for it."""
    update = trainer.compiled_train_step()
    size = config.data.pad_to or config.data.image_size
    rng = np.random.default_rng(0)
    batch = dict(image=rng.uniform(-1, 1, (config.train.batch_size, size, size, config.data.channels)).astype(np.float32),
                 label=np.zeros(config.train.batch_size, np.int32), mask=np.ones(config.train.batch_size, np.float32))
    batch = sharding.global_batch(batch, trainer.batch_sharding)
    box = [trainer.initial_state()]
    if hasattr(box[0], "disc_params"):  # time the step with the adversarial half switched on
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
    runs = dict(vqvae=stepper(Trainer(vqvae_config, devices), vqvae_config),
                vqgan=stepper(VQGANTrainer(vqgan_config, devices), vqgan_config))
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
    ratio = ms["vqgan"] / ms["vqvae"]
    print(json.dumps(dict(
        device=str(devices[0].device_kind), batch_size=vqgan_config.train.batch_size, steps=steps,
        vqvae_ms_per_step=round(ms["vqvae"], 2), vqgan_ms_per_step=round(ms["vqgan"], 2), ratio=round(ratio, 3),
        vqvae_num_steps=vqvae_config.train.num_steps,
        vqgan_steps_for_vqvae_budget=int(vqvae_config.train.num_steps / ratio))))


if __name__ == "__main__":
    main()
