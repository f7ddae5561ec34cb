"""A checkpoint saved from an 8-device mesh with FSDP-split parameters restores onto 2 devices, under
other shardings, with identical values."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from vqdiff.train import checkpoint, sharding

FSDP_MIN_SIZE = 1024


def mesh_config(shape, param_rules=()):
    return ConfigDict(dict(shape=shape, axes=("data", "fsdp", "model"), batch_axes=("data", "fsdp"),
                           param_rules=param_rules, fsdp_min_size=FSDP_MIN_SIZE))


def host_state() -> dict:
    """A train-state-like tree of random values: params, Adam moments of the same shapes, a step."""
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(32, 64)).astype(np.float32),    # split dim 1
                        "bias": rng.normal(size=(64,)).astype(np.float32)},         # small: replicated
              "conv": {"kernel": rng.normal(size=(3, 3, 16, 24)).astype(np.float32)}}
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree_util.tree_map(lambda x: rng.normal(size=np.shape(x)).astype(np.asarray(x).dtype)
                                       if np.ndim(x) else np.asarray(x), opt_state)
    return {"step": np.asarray(7, np.int32), "params": params, "opt_state": opt_state}


def placed(state: dict, mesh_cfg: ConfigDict, devices):
    mesh = sharding.create_mesh(mesh_cfg, devices)
    shardings = sharding.state_shardings(state, mesh, mesh_cfg)
    return jax.device_put(state, shardings), shardings


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(workdir, host state) of the state saved at step 7 from a (data 2, fsdp 4) mesh of 8 devices."""
    expected = host_state()
    state, shardings = placed(expected, mesh_config((2, 4, 1)), jax.devices()[:8])
    assert shardings["params"]["dense"]["kernel"].spec == P(None, "fsdp")
    assert {s.data.shape for s in state["params"]["dense"]["kernel"].addressable_shards} == {(32, 16)}
    workdir = str(tmp_path_factory.mktemp("reshard"))
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(7, state, force=True)
    ckpt.close()
    return workdir, expected


@pytest.mark.parametrize("shape,rules,kernel_spec,kernel_shard", [
    ((1, 2, 1), (), P(None, "fsdp"), (32, 32)),
    ((2, 1, 1), (), P(), (32, 64)),
    ((1, 1, 2), (("dense/kernel", ("model",)),), P("model"), (16, 64)),
], ids=["fsdp2", "replicated", "model2_by_rule"])
def test_restore_onto_two_devices_keeps_values_and_takes_requested_shardings(
        saved, shape, rules, kernel_spec, kernel_shard):
    workdir, expected = saved
    devices = jax.devices()[:2]
    mesh_cfg = mesh_config(shape, rules)
    mesh = sharding.create_mesh(mesh_cfg, devices)
    wanted = sharding.state_shardings(expected, mesh, mesh_cfg)
    restored = checkpoint.Checkpointer(workdir, create=False).restore(
        checkpoint.abstract_with_shardings(expected, wanted))
    got, want = (jax.tree_util.tree_leaves_with_path(t) for t in (restored, wanted))
    assert [path for path, _ in got] == [path for path, _ in want]
    for (path, array), (_, requested) in zip(got, want):
        assert array.sharding == requested, sharding.path_to_string(path)
        assert set(array.sharding.device_set) == set(devices)
    kernel = restored["params"]["dense"]["kernel"]
    assert kernel.sharding.spec == kernel_spec
    assert {s.data.shape for s in kernel.addressable_shards} == {kernel_shard}
    assert restored["opt_state"][0].mu["dense"]["kernel"].sharding.spec == kernel_spec   # moments follow
    jax.tree_util.tree_map(np.testing.assert_array_equal, sharding.to_host(restored), expected)
