"""Device mesh and shardings from the config: batch over the data axes, parameters by regex rules."""
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def create_mesh(mesh_config, devices=None) -> Mesh:
    """Mesh of `devices` (default all) with `mesh_config.shape` over `mesh_config.axes`; one -1 takes
    the rest."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(mesh_config.shape)
    axes = tuple(mesh_config.axes)
    if len(shape) != len(axes):
        raise ValueError(f"config.mesh.shape={tuple(shape)} and config.mesh.axes={axes} differ in length")
    num_devices = len(devices)
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape={tuple(shape)}: at most one -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if num_devices % known:
            raise ValueError(f"config.mesh.shape={tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if int(np.prod(shape)) != num_devices:
        raise ValueError(f"config.mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices, "
                         f"found {num_devices}")
    return Mesh(np.asarray(devices).reshape(shape), axes)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str] = ("data",)) -> NamedSharding:
    """Leading (batch) dimension split over `batch_axes`, the rest replicated."""
    return NamedSharding(mesh, P(tuple(batch_axes)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def path_to_string(path) -> str:
    """A jax key path as 'a/b/0/c'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def spec_for_path(path: str, shape, rules) -> P:
    """First rule whose regex matches (re.search) `path` gives the PartitionSpec; default replicated.

    A rule is (regex, spec) with spec a tuple of axis names / None, e.g. ('.*dense.*kernel', (None, 'model')).
    A spec longer than the array's rank, or naming a dimension that does not divide, falls back to
    replicated for that array (scalars and small vectors stay replicated).
    """
    for pattern, spec in rules:
        if re.search(pattern, path):
            spec = tuple(spec)
            if len(spec) > len(shape):
                return P()
            return P(*spec)
    return P()


def tree_shardings(tree, mesh: Mesh, rules=()):
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs) by `rules`."""
    def leaf_sharding(path, leaf):
        return NamedSharding(mesh, spec_for_path(path_to_string(path), getattr(leaf, "shape", ()), rules))
    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """This process's numpy batch → global jax.Arrays sharded by `sharding`."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
