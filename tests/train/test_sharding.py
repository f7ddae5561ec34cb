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


def fsdp_mesh(fsdp=4, data=2):
    return sharding.create_mesh(mesh_config((data, fsdp), ("data", "fsdp")), jax.devices()[:data * fsdp])


def test_fsdp_splits_largest_divisible_dimension_of_large_arrays():
    mesh = fsdp_mesh(fsdp=4)
    tree = {"dense": {"kernel": jax.ShapeDtypeStruct((16, 64), np.float32),        # 1024 ≥ 512
                      "bias": jax.ShapeDtypeStruct((64,), np.float32)},            # 64 < 512: replicated
            "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 32, 32), np.float32)},  # tie: the last dimension
            "odd": {"kernel": jax.ShapeDtypeStruct((12, 90, 2), np.float32)},      # 90 ∤ 4: the next largest
            "prime": {"kernel": jax.ShapeDtypeStruct((7, 77), np.float32)},        # none divides: replicated
            "step": jax.ShapeDtypeStruct((), np.int32)}
    shardings = sharding.tree_shardings(tree, mesh, fsdp_min_size=512)
    assert jax.tree_util.tree_map(lambda s: s.spec, shardings) == {
        "dense": {"kernel": P(None, "fsdp"), "bias": P()}, "conv": {"kernel": P(None, None, None, "fsdp")},
        "odd": {"kernel": P("fsdp")}, "prime": {"kernel": P()}, "step": P()}


def test_fsdp_threshold_is_inclusive_and_none_or_axis_size_one_turns_it_off():
    tree = {"at": jax.ShapeDtypeStruct((8, 64), np.float32), "below": jax.ShapeDtypeStruct((8, 63), np.float32)}
    specs = lambda mesh, **kw: {k: s.spec for k, s in sharding.tree_shardings(tree, mesh, **kw).items()}
    assert specs(fsdp_mesh(fsdp=4), fsdp_min_size=512) == {"at": P(None, "fsdp"), "below": P()}
    assert specs(fsdp_mesh(fsdp=4)) == {"at": P(), "below": P()}
    assert specs(fsdp_mesh(fsdp=1, data=8), fsdp_min_size=1) == {"at": P(), "below": P()}
    one_d = sharding.create_mesh(mesh_config((-1,), ("data",)))
    assert specs(one_d, fsdp_min_size=1) == {"at": P(), "below": P()}


def test_fsdp_adds_to_a_rule_on_another_dimension_and_keeps_a_rule_that_uses_it():
    mesh = sharding.create_mesh(mesh_config((2, 2, 2), ("data", "fsdp", "model")))
    tree = {"mlp": {"kernel": jax.ShapeDtypeStruct((32, 64), np.float32)},
            "attn": {"kernel": jax.ShapeDtypeStruct((32, 64), np.float32)},
            "head": {"kernel": jax.ShapeDtypeStruct((32, 63), np.float32)}}
    rules = [("mlp/kernel", (None, "model")), ("attn/kernel", ("fsdp",)), ("head/kernel", (None, "model"))]
    specs = {k: v["kernel"].spec for k, v in sharding.tree_shardings(tree, mesh, rules, fsdp_min_size=16).items()}
    # 'model' takes the largest dimension of mlp, so fsdp goes to the other; a rule naming fsdp wins; a rule
    # whose axis does not divide (63 by 2) replicates, then FSDP takes the dimension that divides.
    assert specs == {"mlp": P("fsdp", "model"), "attn": P("fsdp"), "head": P("fsdp")}


def test_fsdp_tree_places_shards_of_the_expected_shape():
    mesh = fsdp_mesh(fsdp=4)
    params = {"kernel": np.arange(16 * 64, dtype=np.float32).reshape(16, 64)}
    shardings = sharding.tree_shardings(params, mesh, fsdp_min_size=1)
    placed = jax.device_put(params, shardings)
    assert {s.data.shape for s in placed["kernel"].addressable_shards} == {(16, 16)}
    np.testing.assert_array_equal(sharding.to_host(placed)["kernel"], params["kernel"])


def test_rule_naming_an_axis_the_mesh_lacks_is_a_user_error():
    from vqdiff.errors import UserError
    mesh = fsdp_mesh()
    with pytest.raises(UserError, match=r"names axes \['model'\] that the mesh \(axes \('data', 'fsdp'\)\) lacks"):
        sharding.tree_shardings({"w": np.zeros((4, 4))}, mesh, [("w", (None, "model"))])
