"""Process flags and cluster detection of vqdiff.train.distributed (the joining itself is exercised by
test_multiprocess.py, in child processes)."""
import pytest

from vqdiff.errors import UserError
from vqdiff.train import distributed


@pytest.mark.parametrize("flags,message", [
    (dict(num_processes=2), r"--coordinator_address, --process_id missing"),
    (dict(coordinator_address="h:1", process_id=0), r"--num_processes missing"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=0, multihost=True), "drop it"),
    (dict(coordinator_address="10.0.0.2", num_processes=2, process_id=0), "use HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), r"--num_processes=0 must be ≥ 1"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"--process_id=2 must lie in \[0, "),
    (dict(coordinator_address="h:1", num_processes=2, process_id=-1), r"--process_id=-1 must lie"),
])
def test_inconsistent_process_flags_are_user_errors(flags, message):
    args = dict(coordinator_address=None, num_processes=None, process_id=None, multihost=False) | flags
    with pytest.raises(UserError, match=message):
        distributed.initialize(**args, environ={})


@pytest.mark.parametrize("address", ["localhost:8476", "10.0.0.2:1", "[::1]:8476", "worker-0.pod:8476"])
def test_coordinator_addresses_of_the_usual_forms_pass(address):
    distributed.check_flags(address, 4, 3, False)


def test_single_process_runs_initialise_nothing():
    assert distributed.initialize(environ={}) is False
    assert distributed.initialize("localhost:1", 1, 0, environ={}) is False


@pytest.mark.parametrize("environ,launcher", [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"}, "Slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, None),
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, "Cloud TPU"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
])
def test_multi_task_launches_are_detected_from_the_environment(environ, launcher):
    assert distributed.launched_by_cluster(environ) == launcher
