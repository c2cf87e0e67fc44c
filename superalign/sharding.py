"""Device meshes for seed sweeps and data-parallel SAE training (JAX's own sharding).

Everything here is a thin layer over ``jax.sharding``: a 1-D :class:`~jax.sharding.Mesh` over the
devices, and :class:`~jax.sharding.NamedSharding` s that split a leading axis (seeds, or the rows
of a batch) over it. The training entry points that take a ``mesh`` (:func:`superalign.toy.
make_sharded_train`, :func:`superalign.sae.make_sharded_train`,
:func:`superalign.sae.make_data_parallel_train`) default to :func:`default_mesh`.

Single host (the default): nothing to do; ``default_mesh()`` spans ``jax.devices()``. To try
several devices on one CPU, start Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the tests do this in a subprocess).

Several hosts: every process calls ``jax.distributed.initialize()`` first, before any other JAX
call (on SLURM, Open MPI and Cloud TPU the arguments are detected; otherwise pass
``coordinator_address="host0:1234", num_processes=P, process_id=i``). ``jax.devices()`` then lists
the devices of all processes, ``default_mesh()`` spans them all, and every process runs the same
program. Inputs of a multi-host call must be global arrays: build them with
``jax.make_array_from_process_local_data(sharding, local_rows)`` (each process passes its own
share of the seed keys or of the activation rows); outputs are global arrays whose
``addressable_shards`` hold each process's seeds. Keys are cheap: it is simplest to derive all of
them on every process (``jax.random.split(key, n)``) and place them with :func:`put_leading`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SEEDS = "seeds"
"""The default name of the mesh axis."""


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
    return jax.device_put(tree, leading(mesh))


def n_devices_used(x: jax.Array) -> int:
    """How many distinct devices hold a shard of ``x`` (a check that work is spread)."""
    return len({s.device for s in x.addressable_shards})
