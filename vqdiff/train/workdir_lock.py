"""An exclusive lock on a workdir, so two jobs never train into the same checkpoints."""
import fcntl
import os

import jax

from vqdiff.errors import UserError


class WorkdirLock:
    """Holds an flock on `<workdir>/.lock` (process 0, local paths only). The kernel releases it when
    the process dies, SIGKILL included, so a crashed run never leaves a stale lock."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.file = None

    def __enter__(self):
        if jax.process_index() != 0 or "://" in self.path:
            return self
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UserError(f"workdir {os.path.dirname(self.path)} is in use by another running job "
                            f"(pid {holder}): wait for it to finish, or use another --workdir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
        return False
