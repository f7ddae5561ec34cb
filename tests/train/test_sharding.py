import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from vqdiff.train import sharding


def mesh_config(shape, axes):
    return ConfigDict(dict(shape=shape, axes=axes))


def test_mesh_fills_minus_one_with_remaining_devices():
    mesh = sharding.create_mesh(mesh_config((-1, 2), ("data", "model")))
    assert dict(mesh.shape) == {"data": jax.device_count() // 2, "model": 2}


@pytest.mark.parametrize("shape,axes,message", [
    ((3,), ("data",), "needs 3 devices"),
    ((-1, -1), ("data", "model"), "at most one -1"),
    ((-1,), ("data", "model"), "differ in length"),
])
def test_bad_mesh_shapes_are_named(shape, axes, message):
    with pytest.raises(ValueError, match=message):
        sharding.create_mesh(mesh_config(shape, axes))


def test_rules_pick_first_match_and_default_to_replicated():
    rules = [(r"dense.*kernel", (None, "model")), (r"kernel", ("data",))]
    assert sharding.spec_for_path("encoder/dense_0/kernel", (4, 8), rules) == P(None, "model")
    assert sharding.spec_for_path("encoder/conv/kernel", (3, 3, 4, 8), rules) == P("data")
    assert sharding.spec_for_path("encoder/conv/bias", (8,), rules) == P()
    assert sharding.spec_for_path("encoder/dense_0/kernel", (), rules) == P()   # rank too small


def test_tree_shardings_follow_paths_and_global_batch_splits_rows():
    mesh = sharding.create_mesh(mesh_config((-1,), ("data",)))
    tree = {"dense": {"kernel": np.zeros((8, 3)), "bias": np.zeros(3)}}
    shardings = sharding.tree_shardings(tree, mesh, [(r"dense/kernel", ("data",))])
    assert shardings["dense"]["kernel"].spec == P("data")
    assert shardings["dense"]["bias"].spec == P()
    batch = {"image": np.arange(8 * 2, dtype=np.float32).reshape(8, 2)}
    out = sharding.global_batch(batch, sharding.batch_sharding(mesh))
    np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
    assert len(out["image"].addressable_shards) == jax.device_count()
    assert out["image"].addressable_shards[0].data.shape == (8 // jax.device_count(), 2)
