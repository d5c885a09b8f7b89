"""Data parallelism on a device mesh: the batch is sharded over all devices, the state replicated.

jit over a sharded global batch computes what one device would on the whole batch (XLA inserts the
reductions), so BatchNorm statistics are over the global batch (timm's SyncBN) and results do not
depend on the device count. With several processes each feeds its own rows of the global batch.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@functools.lru_cache(maxsize=None)
def mesh() -> Mesh:
    """One 'data' axis over every device of every process."""
    return Mesh(np.array(jax.devices()), ('data',))


def replicated(memory_kind: str | None = None) -> NamedSharding:
    return NamedSharding(mesh(), P(), memory_kind=memory_kind)


def batch_sharding() -> NamedSharding:
    return NamedSharding(mesh(), P('data'))


def replicate(tree):
    """`tree` copied onto every device."""
    return jax.device_put(tree, replicated())


def shard_batch(batch: dict) -> dict:
    """This process's rows of the global batch -> global arrays sharded over the 'data' axis."""
    if jax.process_count() == 1:
        return jax.device_put(batch, batch_sharding())
    return {k: jax.make_array_from_process_local_data(batch_sharding(), v) for k, v in batch.items()}
