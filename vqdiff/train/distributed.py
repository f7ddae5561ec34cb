"""Joining a multi-process run (the hosts of a Cloud TPU pod, several GPU hosts): every process runs the
same command, calls `initialize` before JAX touches a device, and then sees all devices of the run in
jax.devices() and its own in jax.local_devices().

Three ways in, by precedence:
  explicit flags   --coordinator_address=HOST:PORT --num_processes=N --process_id=I (all three; the
                   coordinator is process 0's host, reachable from every process)
  --multihost      JAX finds them itself on Cloud TPU pods (from the TPU metadata), Slurm, Open MPI and
                   GKE TPU jobs
  automatic        a Slurm or Open MPI launch of more than one task, or a GKE TPU job over several hosts,
                   announces itself in the environment: as --multihost
Otherwise the run is single-process and nothing is initialised.
"""
import os
import re

import jax

from vqdiff.errors import UserError

# Seconds a process waits for all others to connect: a worker that never starts fails the run, not hangs it.
INITIALIZATION_TIMEOUT = 300


def launched_by_cluster(environ=os.environ) -> str | None:
    """The launcher that started this process as one of several, from its environment variables
    (the ones JAX's cluster detection reads), or None."""
    def count(name):
        value = environ.get(name, "")
        return int(value) if value.isdigit() else 0
    if "SLURM_JOB_ID" in environ and "SLURM_STEP_NODELIST" in environ and count("SLURM_NTASKS") > 1:
        return "Slurm"
    if "OMPI_MCA_orte_hnp_uri" in environ and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "Cloud TPU"
    return None


def check_flags(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                multihost: bool):
    """Raises UserError for an inconsistent set of process flags."""
    given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
             "--process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return
    if missing:
        raise UserError(f"{', '.join(missing)} missing: --coordinator_address, --num_processes and --process_id "
                        f"go together (or give none of them, with --multihost on a Cloud TPU pod or under "
                        f"Slurm or Open MPI)")
    if multihost:
        raise UserError("--multihost asks JAX to find the processes itself: drop it, or drop "
                        "--coordinator_address, --num_processes and --process_id")
    if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[\w.-]+):\d{1,5}", coordinator_address):
        raise UserError(f"--coordinator_address={coordinator_address!r}: use HOST:PORT of process 0, "
                        f"e.g. 10.0.0.2:8476")
    if num_processes < 1:
        raise UserError(f"--num_processes={num_processes} must be ≥ 1")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} must lie in [0, --num_processes={num_processes}): "
                        f"number the processes 0 … {num_processes - 1}, with 0 on the coordinator's host")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, multihost: bool = False, environ=os.environ,
               timeout_s: int = INITIALIZATION_TIMEOUT) -> bool:
    """Calls jax.distributed.initialize when the run is multi-process (see the module docstring);
    returns whether it did. Must run before anything asks JAX for devices."""
    check_flags(coordinator_address, num_processes, process_id, multihost)
    if num_processes is not None:
        if num_processes == 1:
            return False
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
        how = f"--coordinator_address={coordinator_address}"
    else:
        launcher = launched_by_cluster(environ)
        if not (multihost or launcher):
            return False
        kwargs = {}
        how = "--multihost" if multihost else f"a {launcher} launch"
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except (RuntimeError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not join the multi-process run ({how}): {first_line}. Start the same command "
                        f"on every host within {timeout_s} s; without --coordinator_address, JAX must "
                        f"recognise the cluster (Cloud TPU, Slurm, Open MPI)") from e
    return True


def describe() -> str:
    """'process 1 of 4, 8 of 32 devices (tpu)'."""
    return (f"process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} of "
            f"{jax.device_count()} devices ({jax.default_backend()})")
