"""Orbax checkpointing of a TrainState-like dict, with resume from the newest complete step.

In a multi-process run every process calls `save` and `restore` with the same step (they are collective):
each writes and reads the shards its devices hold, and process 0 writes the metadata and commits the
step. The workdir must then be one folder all processes see (a GCS bucket, or a shared file system).
A restore lands on the shardings of its target, so a checkpoint saved on one mesh restores onto another
(other device count, FSDP on or off)."""
import os

import jax
import orbax.checkpoint as ocp

from vqdiff.errors import UserError


def checkpoint_dir(workdir: str) -> str:
    """`<workdir>/checkpoints`; a local workdir made absolute, a URL (gs://...) kept as it is."""
    return os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    """Keeps the newest `max_to_keep` checkpoints (plus every `keep_period`-th step if set) in
    `<workdir>/checkpoints`. Orbax writes each step to a temporary folder and renames it when complete,
    so a run killed mid-save leaves no step that `latest_step` would pick."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3, keep_period: int | None = None,
                 create: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period or None,
                                               create=create)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, *, force: bool = False) -> bool:
        """Starts an asynchronous save of `state` (a pytree of jax.Arrays) at `step`."""
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, abstract_state: dict, step: int | None = None) -> dict:
        """Restores `step` (default newest) into the structure, dtypes and shardings of
        `abstract_state` (jax.ShapeDtypeStructs with `.sharding`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint in {self.directory}: train first "
                            f"(python run.py --config=... --workdir=...), or point --workdir at a trained run")
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise UserError(f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); delete that step folder to fall "
                            f"back to an older one, or check that the config matches the run") from e

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs of `tree` carrying `shardings` (a matching tree of NamedShardings)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
