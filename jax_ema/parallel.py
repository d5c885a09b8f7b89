"""Data parallelism on a device mesh: the batch is sharded over all devices, the state replicated.

jit over a sharded global batch computes what one device would on the whole batch (XLA inserts the
reductions), so BatchNorm statistics are over the global batch (timm's SyncBN) and results do not
depend on the device count. With several processes (`initialize`) the mesh spans every device of
every process and each process feeds its own rows of the global batch.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jax_ema.errors import UserError


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Join a multi-process run (`jax.distributed.initialize`) before any device is used.

    Nothing happens unless an argument is given or `auto` asks for the environment's detection
    (SLURM, Open MPI, Cloud TPU, Kubernetes). On CPU the collectives between processes go through gloo.
    Processes other than 0 log warnings only.
    """
    if coordinator_address is None and num_processes is None and process_id is None and not auto:
        return
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise UserError(
            f'--process-id {process_id} is not in [0, --num-processes {num_processes}); number the processes 0 .. N-1'
        )
    if jax.distributed.is_initialized():
        return
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU only; GPU/TPU use their own
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f'cannot join the multi-process run ({reason[:200]}); give --coordinator-address '
            'HOST:PORT, --num-processes and --process-id, or run under SLURM / on a TPU pod'
        ) from None
    if jax.process_index() != 0:
        logging.getLogger('jax_ema').setLevel(logging.WARNING)


def is_main() -> bool:
    """Whether this process writes the run folder's files (summaries, plots, logs): process 0."""
    return jax.process_index() == 0


def broadcast_path(path) -> str:
    """Process 0's `path` (a string) on every process."""
    if jax.process_count() == 1:
        return str(path)
    from jax.experimental import multihost_utils

    data = np.zeros(4096, np.uint8)
    if path is not None:
        encoded = os.fsencode(str(path))[:4096]
        data[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return os.fsdecode(data[data != 0].tobytes())


@functools.cache
def mesh() -> Mesh:
    """One 'data' axis over every device of every process."""
    return Mesh(np.array(jax.devices()), ('data',))


def replicated(memory_kind: str | None = None) -> NamedSharding:
    return NamedSharding(mesh(), P(), memory_kind=memory_kind)


def batch_sharding() -> NamedSharding:
    return NamedSharding(mesh(), P('data'))


def last_axis_sharding(ndim: int = 1) -> NamedSharding:
    """An array's last axis split over the 'data' axis (the sharded EMA's flat buffer)."""
    return NamedSharding(mesh(), P(*([None] * (ndim - 1)), 'data'))


def replicate(tree):
    """`tree` copied onto every device."""
    return jax.device_put(tree, replicated())


@functools.cache
def _gather_jit():
    return jax.jit(lambda x: x, out_shardings=replicated())


def gather(tree):
    """`tree` with every leaf whole on every device (sharded leaves all-gathered), so that each
    process can read it; replicated leaves are returned as they are.

    It waits for the all-gathers (once per evaluation or save): on 8 CPU devices an eager op dispatched
    while an all-gather was in flight deadlocked XLA's CPU runtime at times (jax 0.10.2, tests/shard_cases.py).
    """

    def whole(x):
        return _gather_jit()(x) if isinstance(x, jax.Array) and not x.sharding.is_fully_replicated else x

    return jax.block_until_ready(jax.tree.map(whole, tree))


def shard_batch(batch: dict) -> dict:
    """This process's rows of the global batch -> global arrays sharded over the 'data' axis."""
    if jax.process_count() == 1:
        return jax.device_put(batch, batch_sharding())
    return {k: jax.make_array_from_process_local_data(batch_sharding(), v) for k, v in batch.items()}
