"""The device-mesh axis that sharded programs split data along, for code that runs inside them.

``diwa_jax/distributed.py`` traces its sharded programs under ``jax.set_mesh(mesh)``; code it runs marks arrays
that should stay split with ``split_over_data`` (a no-op when no mesh with a ``data`` axis is set, so the
single-device programs are unchanged).
"""
import jax
from jax.sharding import PartitionSpec

DATA_AXIS = "data"


def split_over_data(x: jax.Array, axis: int = 0) -> jax.Array:
    """``x`` with dimension ``axis`` split over the current mesh's ``data`` axis (XLA would otherwise be free to
    replicate the work on every device); ``x`` unchanged outside such a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*([None] * axis), DATA_AXIS))
