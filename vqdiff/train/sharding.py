"""Device mesh and shardings from the config: batch over the data axes, parameters by regex rules, and
FSDP (each large array split over the 'fsdp' axis along one dimension)."""
import math
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vqdiff.errors import UserError

FSDP_AXIS = "fsdp"


def create_mesh(mesh_config, devices=None) -> Mesh:
    """Mesh of `devices` (default all, over every process) with `mesh_config.shape` over
    `mesh_config.axes`; one -1 takes the rest.

    The default devices are ordered by process, so that each process's devices hold consecutive rows of
    a batch split over the leading axes (what `global_batch` assumes of a process's local rows)."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    devices = list(devices)
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
    A spec longer than the array's rank gives replicated for that array (scalars and small vectors stay
    replicated); `tree_shardings` also replicates an array whose dimensions the named axes do not divide.
    """
    for pattern, spec in rules:
        if re.search(pattern, path):
            spec = tuple(spec)
            if len(spec) > len(shape):
                return P()
            return P(*spec)
    return P()


def _axes_of(entry) -> tuple:
    """The mesh axes one PartitionSpec entry names: None → (), 'a' → ('a',), ('a', 'b') → ('a', 'b')."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def divides(spec: P, shape, axis_sizes: dict) -> bool:
    """Whether every dimension of `shape` divides by the product of the mesh axes `spec` puts on it."""
    return all(dim % math.prod(axis_sizes[a] for a in _axes_of(entry)) == 0
               for dim, entry in zip(shape, spec))


def add_fsdp(spec: P, shape, fsdp_size: int, min_size: int) -> P:
    """`spec` with the 'fsdp' axis on one more dimension, for arrays of at least `min_size` elements.

    The dimension is the largest that `spec` leaves unsharded and that `fsdp_size` divides (of equal
    ones, the last: the output features of a kernel). Arrays below `min_size`, arrays with no such
    dimension, and specs that already use 'fsdp' are returned unchanged; fsdp_size 1 changes nothing.
    """
    used = {a for entry in spec for a in _axes_of(entry)}
    if fsdp_size <= 1 or FSDP_AXIS in used or math.prod(shape) < min_size:
        return spec
    entries = list(spec) + [None] * (len(shape) - len(spec))
    free = [i for i, (dim, entry) in enumerate(zip(shape, entries)) if entry is None and dim % fsdp_size == 0]
    if not free:
        return spec
    entries[max(free, key=lambda i: (shape[i], i))] = FSDP_AXIS
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def check_rules(rules, mesh: Mesh):
    """Raises UserError for a rule that is not (regex, spec) or names an axis the mesh lacks."""
    for rule in rules:
        if len(rule) != 2:
            raise UserError(f"config.mesh.param_rules: {rule!r} is not a (regex, partition spec) pair")
        pattern, spec = rule
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"config.mesh.param_rules: {pattern!r} is not a regex ({e})") from None
        unknown = [a for entry in spec for a in _axes_of(entry) if a not in mesh.shape]
        if unknown:
            raise UserError(f"config.mesh.param_rules: rule {pattern!r} → {tuple(spec)} names axes {unknown} "
                            f"that the mesh (axes {tuple(mesh.axis_names)}) lacks")


def tree_shardings(tree, mesh: Mesh, rules=(), *, fsdp_min_size: int | None = None):
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs).

    The first matching rule of `rules` gives the spec (replicated when the axes it names do not divide
    the array); then, when `fsdp_min_size` is set and the mesh has an 'fsdp' axis, arrays of at least
    `fsdp_min_size` elements are also split over 'fsdp' (see `add_fsdp`). Optimizer moments have the
    shapes of their parameters, so they are split the same way.
    """
    check_rules(rules, mesh)
    axis_sizes = dict(mesh.shape)
    fsdp_size = axis_sizes.get(FSDP_AXIS, 1)

    def leaf_sharding(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        spec = spec_for_path(path_to_string(path), shape, rules)
        if not divides(spec, shape, axis_sizes):
            spec = P()
        if fsdp_min_size is not None:
            spec = add_fsdp(spec, shape, fsdp_size, fsdp_min_size)
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def state_shardings(tree, mesh: Mesh, mesh_config):
    """`tree_shardings` by `mesh_config.param_rules` and `mesh_config.fsdp_min_size` (None: no FSDP)."""
    return tree_shardings(tree, mesh, mesh_config.param_rules,
                          fsdp_min_size=mesh_config.get("fsdp_min_size"))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """This process's numpy batch → global jax.Arrays sharded by `sharding`."""
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def to_host(tree):
    """Numpy copies of the (global) values of a tree of jax.Arrays, on every process, also when an array
    spans other processes' devices (then gathered with a collective every process must join)."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree_util.tree_map(fetch, tree)
