"""Every JAX sharding call lives here: the device mesh, logical-axis rules, sharded creation, batch assembly.

Parameters carry logical axis names (models/bert.py); one rules table (`mesh.rules` in the config) maps them to
the mesh axes ('data', 'fsdp'). Data parallel is the default (fsdp = 1); FSDP is a change of `mesh.fsdp`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from tinybert_jax.errors import InputError

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every device


def make_mesh(data: int, fsdp: int) -> jax.sharding.Mesh:
    """A ('data', 'fsdp') mesh over all devices; data = -1 takes whatever fsdp leaves."""
    count = jax.device_count()
    if fsdp < 1 or count % fsdp:
        raise InputError(f"mesh.fsdp={fsdp} must be a positive divisor of the device count {count}")
    if data == -1:
        data = count // fsdp
    if data * fsdp != count:
        raise InputError(f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} devices, but {count} are present")
    # Auto axes: JAX >= 0.9 defaults to Explicit, under which logical sharding constraints do not apply.
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto, AxisType.Auto))


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, rules: Sequence) -> Iterator[None]:
    """Mesh and logical-axis rules in force for tracing (activation constraints inside the model use them)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(tuple(rule) for rule in rules)):
        yield


def _mesh_spec(names: tuple, shape: tuple, mesh: jax.sharding.Mesh, rules: Sequence) -> PartitionSpec:
    table = {logical: mesh_axes for logical, mesh_axes in rules}
    used: set = set()
    spec = []
    for name, size in zip(names, shape):
        axes = table.get(name)
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        # An axis is sharded only when it divides evenly and no earlier dimension already uses the mesh axis.
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and size % int(np.prod([mesh.shape[a] for a in axes])) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def shardings_of(abstract: Any, mesh: jax.sharding.Mesh, rules: Sequence) -> Any:
    """NamedShardings for an abstract tree whose leaves may be boxed with logical names (unboxed structure)."""

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, _mesh_spec(leaf.names, leaf.value.shape, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def create_sharded(init_fn: Callable[[], Any], mesh: jax.sharding.Mesh, rules: Sequence) -> tuple[Any, Any]:
    """Runs `init_fn` (which may return boxed params) with every output created directly in its sharding.

    Returns (unboxed tree, its shardings). Nothing is first materialised on one device.
    """
    shardings = shardings_of(jax.eval_shape(init_fn), mesh, rules)
    with activate(mesh, rules):
        tree = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
    return tree, shardings


def put_sharded(tree: Any, shardings: Any) -> Any:
    """Host (numpy) arrays -> global arrays with the given shardings; every process holds the full values."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda index: np.asarray(x)[index]),
                        tree, shardings)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_divisible(global_batch_size: int, mesh: jax.sharding.Mesh, key: str = "train.batch_size") -> None:
    """`key` names the config key the batch size came from."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise InputError(f"{key}={global_batch_size} is not divisible by the {devices} devices of the "
                         f"mesh {dict(mesh.shape)}; use a multiple of {devices}")


def process_batch_rows(mesh: jax.sharding.Mesh, global_batch_size: int) -> slice:
    """The rows of every global batch that this process's devices hold (its loader reads exactly these)."""
    check_batch_divisible(global_batch_size, mesh)
    rows = sorted({(index[0].start or 0, index[0].stop or global_batch_size) for index in
                   batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,)).values()})
    if any(stop != next_start for (_, stop), (next_start, _) in zip(rows, rows[1:])):
        raise InputError(f"this process's devices hold non-contiguous batch rows {rows} of the mesh "
                         f"{dict(mesh.shape)}; use a mesh whose device order groups each host's devices")
    return slice(rows[0][0], rows[-1][1])


def host_copy(tree: Any) -> Any:
    """Full numpy values of a tree of global arrays on every process (a collective when arrays span hosts: call it
    on all processes, then let process 0 write)."""
    if all(leaf.is_fully_addressable for leaf in jax.tree.leaves(tree) if isinstance(leaf, jax.Array)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows (`process_batch_rows`) -> one global array per key, split over the batch axes."""
    sharding = batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in local_batch.items()}


def local_rows_mesh() -> jax.sharding.Mesh:
    """This process's devices on one axis: work each host does on its own (augmentation's MLM forwards)."""
    return jax.sharding.Mesh(np.asarray(jax.local_devices()), ("rows",))


def put_rows(arrays: Sequence[np.ndarray], mesh: jax.sharding.Mesh) -> list[jax.Array]:
    """Arrays split by rows over `mesh` (a local mesh: the row count a multiple of its size); a jitted function
    of them then runs on every device, each on its rows."""
    split = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return [jax.device_put(array, split) for array in arrays]


def put_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def compile_step(fn: Callable, mesh: jax.sharding.Mesh, rules: Sequence, in_shardings: Any, out_shardings: Any,
                 donate_argnums: int | tuple = ()) -> Callable:
    """jit with explicit shardings; tracing happens under the mesh and the logical rules."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)

    def call(*args):
        with activate(mesh, rules):
            return jitted(*args)

    return call


def compile_step_for_shapes(fn: Callable, mesh: jax.sharding.Mesh, rules: Sequence, in_shardings: Any,
                            out_shardings: Any, donate_argnums: int | tuple, leading_args: tuple,
                            batch_shapes: list[dict]) -> Callable:
    """`compile_step`, compiled ahead of time for every global batch shape ({name: (shape, dtype)}, the batch
    being the last argument, after `leading_args`); a call runs the executable of its batch's input_ids length.
    So every compilation happens here, before the first step, where it can be timed."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)
    compiled = {}
    with activate(mesh, rules):
        for shapes in batch_shapes:
            batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh))
                     for name, (shape, dtype) in shapes.items()}
            compiled[batch["input_ids"].shape[1]] = jitted.lower(*leading_args, batch).compile()

    def call(*args):
        with activate(mesh, rules):
            return compiled[args[-1]["input_ids"].shape[1]](*args)

    return call
