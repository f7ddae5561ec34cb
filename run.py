"""vqdiff entry point: flags → config → mode → trainer.

    python run.py --config=experiments/vqvae_fashion_mnist.py --workdir=W [--mode=train|eval]
    python run.py --config=experiments/vqvae_fashion_mnist.py --workdir=W --config.train.num_steps=100
"""
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, grids and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do with the config and workdir.")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = ("tokenizer",)


def run(config, workdir: str, mode: str):
    from vqdiff.errors import UserError
    if config.trainer not in TRAINERS:
        raise UserError(f"config.trainer={config.trainer!r} is not one of {', '.join(TRAINERS)}")
    if mode == "train":
        from vqdiff.train import tokenizer_trainer
        tokenizer_trainer.train(config, workdir)
    elif mode == "eval":
        if not os.path.isdir(workdir):
            raise UserError(f"--workdir={workdir} does not exist: train first with --mode=train")
        from vqdiff.train import tokenizer_eval
        print(json.dumps(tokenizer_eval.evaluate(config, workdir)), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from vqdiff.errors import UserError
    try:
        run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except (UserError, FloatingPointError) as e:
        if os.environ.get("VQDIFF_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
