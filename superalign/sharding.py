"""Device meshes for seed sweeps and data-parallel SAE training (JAX's own sharding).

Everything here is a thin layer over ``jax.sharding``: a 1-D :class:`~jax.sharding.Mesh` over the
devices, and :class:`~jax.sharding.NamedSharding` s that split a leading axis (seeds, or the rows
of a batch) over it. The training entry points that take a ``mesh`` (:func:`superalign.toy.
make_sharded_train`, :func:`superalign.sae.make_sharded_train`,
:func:`superalign.sae.make_data_parallel_train`) default to :func:`default_mesh`.

Single host (the default): nothing to do; ``default_mesh()`` spans ``jax.devices()``. To try
several devices on one CPU, start Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the tests do this in a subprocess).

Several processes or hosts: every process calls :func:`initialize` (``jax.distributed.initialize``
with CPU collectives) first, before any other JAX call (on SLURM, Open MPI and Cloud TPU the
arguments are detected; otherwise pass ``coordinator_address="host0:1234", num_processes=P,
process_id=i``). ``jax.devices()`` then lists
the devices of all processes, ``default_mesh()`` spans them all, and every process runs the same
program. Inputs of a multi-process call must be global arrays: :func:`put` (and :func:`put_leading`)
build them from a value that every process holds (keys derived from the same seeds on every
process); outputs are global arrays whose ``addressable_shards`` hold each process's seeds
(:func:`addressable_rows` reads them as numpy), and :func:`gather` collects values once, whole.
:func:`broadcast` (process 0's value everywhere) and :func:`barrier` keep the processes' decisions
and file accesses in step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from superalign import checks

SEEDS = "seeds"
"""The default name of the mesh axis."""


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with CPU collectives enabled.

    Call it in every process before any other JAX call. With all three arguments None, JAX
    detects the cluster itself (SLURM, Open MPI, Cloud TPU pods, Kubernetes) or reads
    ``JAX_COORDINATOR_ADDRESS``; otherwise pass ``coordinator_address="host0:1234"`` (process 0's
    host and a free port), ``num_processes`` and this process's ``process_id``. On CPU devices the
    processes exchange data through gloo (``jax_cpu_collectives_implementation``), which JAX
    ships; GPUs and TPUs use their own collectives.

    After it, ``jax.devices()`` lists every process's devices, :func:`default_mesh` spans them,
    :func:`put` places values on the global mesh and :func:`gather` brings results back.
    """
    if num_processes is not None:
        num_processes = checks.positive_int("num_processes", num_processes)
    if process_id is not None and (
        isinstance(process_id, bool)
        or not isinstance(process_id, int)
        or not 0 <= process_id < (num_processes or process_id + 1)
    ):
        raise ValueError(
            f"process_id must be an int in [0, num_processes={num_processes}), got {process_id!r}"
        )
    checks.positive_int("timeout_s", timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


def default_mesh(devices=None, axis_name: str = SEEDS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes).

    Args:
      devices: a sequence of devices, or None for ``jax.devices()``.
      axis_name: the name of the mesh axis.

    Returns:
      A :class:`~jax.sharding.Mesh` of shape ``[len(devices)]``.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty sequence")
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"axis_name must be a non-empty string, got {axis_name!r}")
    return Mesh(np.asarray(devices), (axis_name,))


def _axis(mesh: Mesh) -> str:
    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be a 1-D jax.sharding.Mesh, got {mesh!r}")
    return mesh.axis_names[0]


def leading(mesh: Mesh) -> NamedSharding:
    """Split the leading axis of an array over the mesh; other axes stay whole."""
    return NamedSharding(mesh, P(_axis(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    _axis(mesh)
    return NamedSharding(mesh, P())


def rows_of_batches(mesh: Mesh) -> NamedSharding:
    """For ``[n_batches, B, n]`` activations: every batch's ``B`` rows split over the mesh."""
    return NamedSharding(mesh, P(None, _axis(mesh)))


def check_divisible(name: str, size: int, mesh: Mesh) -> int:
    """Raise unless ``size`` (of the axis called ``name``) splits evenly over the mesh."""
    n = mesh.devices.size
    if size % n:
        raise ValueError(
            f"{name} must be a multiple of the number of devices in the mesh ({n}), got {size}"
        )
    return size


def put_leading(tree, mesh: Mesh, name: str = "seeds"):
    """Place every leaf of ``tree`` with its leading axis split over the mesh.

    Args:
      tree: a pytree of arrays (numpy, jax, or typed PRNG key arrays) with a common leading
        axis of length ``S``.
      mesh: a 1-D mesh; ``S`` must be a multiple of its size.
      name: what the leading axis is, for error messages.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{name}: the tree has no arrays")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{name}: every array needs the same leading axis, got sizes {sizes}")
    check_divisible(name, sizes.pop(), mesh)
    return put(tree, leading(mesh))


def _put_leaf(x, target: NamedSharding):
    if target.is_fully_addressable:
        return jax.device_put(x, target)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        data = _put_leaf(jax.random.key_data(x), target)
        return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl), out_shardings=target)(data)
    if isinstance(x, jax.Array) and x.sharding == target:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def put(tree, target: NamedSharding):
    """``jax.device_put(tree, target)`` that also works when the mesh spans several processes.

    With one process this is ``jax.device_put``. Under ``jax.distributed`` a sharding over the
    global devices is not addressable from one process, so each process builds its own shards of
    the global array from its copy of the value (``jax.make_array_from_callback``): every
    process must pass the same value (keys derived from the same seeds, the same activations).
    Typed PRNG key arrays are placed through their key data.
    """
    return jax.tree.map(lambda x: _put_leaf(x, target), tree)


def _host_gather(x) -> np.ndarray:
    """Concatenate every process's ``x`` along axis 0, bitwise (any dtype, 64-bit included)."""
    from jax.experimental import multihost_utils

    x = np.ascontiguousarray(x)
    if x.ndim == 0:
        x = x[None]
    # As raw bytes: with 64-bit types off, JAX would carry float64 through float32.
    raw = x.view(np.uint8).reshape(*x.shape, x.dtype.itemsize)
    out = np.asarray(multihost_utils.process_allgather(raw, tiled=True))
    return out.reshape(-1).view(x.dtype).reshape(-1, *x.shape[1:])


def gather(tree):
    """The full value of every leaf as numpy arrays, on every process.

    With one process this is ``np.asarray``. Under ``jax.distributed`` it is one collective per
    leaf (``multihost_utils.process_allgather``): a global array (a mesh over several processes)
    comes back whole; a process-local value (numpy, or an array of this process's devices) is
    concatenated along its leading axis in process order (a scalar counts as ``[1]``), exactly,
    whatever its dtype. Process-local leaves must have the same shape on every process.
    """
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return _host_gather(x)

    return jax.tree.map(leaf, tree)


def addressable_rows(tree) -> tuple[np.ndarray, object]:
    """The rows of the leading axis that this process holds, as numpy arrays.

    For outputs of a computation whose leading axis (seeds) is split over a mesh: with one
    process every row; under ``jax.distributed`` the rows in this process's
    ``addressable_shards``. Every leaf must be split the same way (the same rows per process).

    Args:
      tree: a pytree of arrays ``[S, ...]`` (``jax.Array`` split along ``S``, or numpy).

    Returns:
      ``(rows, local)``: ``rows`` the sorted indices into ``S`` held here, ``local`` the tree
      with every leaf ``[len(rows), ...]`` (numpy) in that order.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        raise ValueError("tree: the tree has no arrays")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"tree: every array needs the same leading axis, got sizes {sizes}")
    n = sizes.pop()

    def blocks(x) -> dict[int, np.ndarray]:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return {0: np.asarray(x)}
        out = {}
        for shard in x.addressable_shards:
            start = (shard.index[0].start or 0) if shard.index else 0
            if start not in out:  # replicas of one block hold the same values
                out[start] = np.asarray(shard.data)
        return out

    per_leaf = [blocks(x) for x in leaves]
    starts = sorted(per_leaf[0])
    rows = np.concatenate([np.arange(s, s + len(per_leaf[0][s])) for s in starts])
    local = []
    for b in per_leaf:
        if sorted(b) != starts or any(len(b[s]) != len(per_leaf[0][s]) for s in starts):
            raise ValueError(
                f"tree: every array must split its leading axis ({n}) the same way over the "
                f"processes; got blocks at {sorted(b)} and {starts}"
            )
        local.append(np.concatenate([b[s] for s in starts]) if len(starts) > 1 else b[starts[0]])
    return rows, jax.tree.unflatten(treedef, local)


def broadcast(tree):
    """Process 0's value of every leaf, on every process (identity with one process).

    For decisions all processes must share (is a result cached, did a check pass) so that they
    keep running the same program.
    """
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(tree)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def n_devices_used(x: jax.Array) -> int:
    """How many distinct devices hold a shard of ``x`` (a check that work is spread)."""
    return len({s.device for s in x.addressable_shards})
