"""vqdiff entry point: flags → config → mode → trainer.

    python run.py --config=experiments/vqvae_fashion_mnist.py --workdir=W [--mode=train|eval]
    python run.py --config=experiments/vqgan_fashion_mnist.py --workdir=W [--mode=train|eval]
    python run.py --config=experiments/dit_fashion_mnist.py --workdir=W [--mode=train|sample|eval]
    python run.py --config=experiments/dit_t2i_fashion_mnist.py --workdir=W [--mode=train|sample|eval]
    python run.py --config=experiments/vqvae_fashion_mnist.py --workdir=W --config.train.num_steps=100
    python run.py --config=... --workdir=/gcs/B/W --multihost     (on every host of a pod: README, Cloud TPU pods)
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
# A multi-process run (Cloud TPU pod, GPU hosts): the same command on every host; see the README.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for a multi-process run without a cluster JAX knows.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 … num_processes − 1.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-process run that JAX detects (Cloud TPU pod, "
                               "Slurm, Open MPI); Slurm and Open MPI launches are detected without it.")
flags.mark_flags_as_required(["config", "workdir"])

TRAINERS = ("tokenizer", "vqgan", "dit", "dit_t2i")


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
    if "://" in workdir:
        raise UserError(f"--workdir={workdir}: logs, grids and config.json are written with local file calls; "
                        f"mount the bucket (gcsfuse) and pass the mounted path, see the README's Cloud TPU section")
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
        from vqdiff.train import dit_eval, dit_trainer, t2i_eval, t2i_trainer
        trainer, evaluation = (t2i_trainer, t2i_eval) if config.trainer == "dit_t2i" else (dit_trainer, dit_eval)
        if mode == "train":
            trainer.train(config, workdir)
        elif mode == "sample":
            print(json.dumps(evaluation.sample(config, workdir)), flush=True)
        else:
            print(json.dumps(evaluation.evaluate(config, workdir)), flush=True)


def use_compilation_cache():
    """XLA executables persist in <vqdiff cache>/xla (VQDIFF_COMPILATION_CACHE overrides the folder, '' turns
    it off), so eval and sample reuse what training compiled (the tokenizer's encoder, the sampler)."""
    import jax

    from vqdiff import weights
    folder = os.environ.get("VQDIFF_COMPILATION_CACHE", str(weights.cache_dir() / "xla"))
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from vqdiff.errors import UserError
    logging.set_verbosity(logging.WARNING)   # the progress lines are the log; Orbax's INFO is noise
    try:
        from vqdiff.train import distributed
        if distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  multihost=_MULTIHOST.value):
            print(distributed.describe(), flush=True)
        use_compilation_cache()
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
