"""vqdiff entry point: flags → config → mode → trainer.

    python run.py --config=experiments/vqvae_fashion_mnist.py --workdir=W [--mode=train|eval]
    python run.py --config=experiments/vqgan_fashion_mnist.py --workdir=W [--mode=train|eval]
    python run.py --config=experiments/dit_fashion_mnist.py --workdir=W [--mode=train|sample|eval]
    python run.py --config=experiments/vqvae_fashion_mnist.py --workdir=W --config.train.num_steps=100
"""
import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs, grids and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"],
                          "What to do with the config and workdir (sample: DiT configs only).")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = ("tokenizer", "vqgan", "dit")


def describe_flag_error(error: Exception, argv) -> str:
    """One line for a flag-parsing failure: the last line of any traceback ml_collections embedded,
    and for an unknown config key the override that named it."""
    lines = [l.strip() for l in str(error).replace("\\n", "\n").splitlines() if l.strip()]
    message = lines[-1] if lines else type(error).__name__
    message = re.sub(r"^\w+(Error|Exception): ", "", message)
    if isinstance(error, (AttributeError, KeyError)):
        message = " ".join(lines).strip("'\"").replace("\\'", "'")
        key = message.split("'")[1] if message.count("'") >= 2 else ""
        culprit = next((a for a in argv if a.startswith("--config.") and key and key in a), None)
        message = f"{culprit or '--config override'}: no such config key {key!r}. " + \
            message.split("\n")[-1].split("'", 2)[-1].strip(" '\"")
    return message


def parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl flag errors, and ml_collections' errors for bad config overrides
        print(f"error: {describe_flag_error(e, argv)}", file=sys.stderr)
        sys.exit(2)


def run(config, workdir: str, mode: str):
    from vqdiff.errors import UserError
    if config.trainer not in TRAINERS:
        raise UserError(f"config.trainer={config.trainer!r} is not one of {', '.join(TRAINERS)}")
    if mode != "train" and not os.path.isdir(workdir):
        raise UserError(f"--workdir={workdir} does not exist: train first with --mode=train")
    if config.trainer in ("tokenizer", "vqgan"):
        if mode == "sample":
            raise UserError("--mode=sample draws from a DiT; a tokenizer config has train and eval "
                            "(its reconstruction grids are in <workdir>/grids and <workdir>/eval)")
        from vqdiff.train import tokenizer_eval, tokenizer_trainer, vqgan_trainer
        if mode == "train":
            (vqgan_trainer if config.trainer == "vqgan" else tokenizer_trainer).train(config, workdir)
        else:
            print(json.dumps(tokenizer_eval.evaluate(config, workdir)), flush=True)
    else:
        from vqdiff.train import dit_eval, dit_trainer
        if mode == "train":
            dit_trainer.train(config, workdir)
        elif mode == "sample":
            print(json.dumps(dit_eval.sample(config, workdir)), flush=True)
        else:
            print(json.dumps(dit_eval.evaluate(config, workdir)), flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from vqdiff.errors import UserError
    logging.set_verbosity(logging.WARNING)   # the progress lines are the log; Orbax's INFO is noise
    try:
        run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except (UserError, FloatingPointError, FileNotFoundError, ValueError) as e:
        # Problems the user can fix, from our checks, the data pipeline or TFDS: one line. A ValueError
        # from a bug would be shortened too: VQDIFF_TRACEBACK=1 shows the traceback.
        if os.environ.get("VQDIFF_TRACEBACK"):
            raise
        message = " ".join(str(e).split()) if isinstance(e, (UserError, FloatingPointError)) else \
            f"{' '.join(str(e).split())} (VQDIFF_TRACEBACK=1 shows where)"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
