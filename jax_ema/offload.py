"""Host-resident EMA (`--model-ema-force-cpu`): the EMA lives in the `pinned_host` memory kind.

Design choice (measured by benchmarks/bench_step.py, numbers in the README): the device step stays the
same donated `train_step` as without EMA, and a second jitted function (`ema_update`) updates the host
EMA from the step's new params — every update, or every K with `--model-ema-update-every K`. Both dispatch asynchronously, so nothing waits for the host. We do not fuse the two
into one jit with memory-kind shardings because the fused step could no longer donate its state: the
host EMA buffers would be donated into a device computation, which aborts the process (seen on CPU),
and without donation the device would hold two copies of the weights, the memory the flag exists to save.
Inside the update the EMA is brought to device memory, averaged and sent back (`out_shardings`), the
recipe of JAX's host-offloading guide.
"""
from __future__ import annotations

import functools

import jax

from jax_ema import ema, parallel


def host_sharding() -> jax.sharding.Sharding:
    """Replicated over the mesh, in pinned host memory."""
    return parallel.replicated('pinned_host')


def device_sharding() -> jax.sharding.Sharding:
    return parallel.replicated('device')


def to_host(tree):
    """A copy of `tree` in pinned host memory."""
    return jax.device_put(tree, host_sharding())


def to_device(tree):
    """A copy of `tree` in device memory (for evaluation and saving)."""
    return jax.device_put(tree, device_sharding())


def memory_kinds(tree) -> set[str]:
    return {leaf.sharding.memory_kind for leaf in jax.tree.leaves(tree)}


@functools.lru_cache(maxsize=None)
def ema_update(cfg: ema.EmaConfig, on_host: bool):
    """jit(ema_params, ema_stats, params, stats, step, gap) -> new EMA, for an EMA held outside the step.

    On the device the EMA buffers are donated (updated in place). On the host they are never donated
    (that aborts); the update runs on the device between two transfers, and `out_shardings` sends it back.
    """
    def update(ema_params, ema_stats, params, stats, step, gap):
        if on_host:
            ema_params, ema_stats = jax.device_put((ema_params, ema_stats), device_sharding())
        return ema.update(cfg, ema_params, ema_stats, params, stats, step, gap)

    if not on_host:
        return jax.jit(update, donate_argnums=(0, 1))
    host, dev = host_sharding(), device_sharding()
    return jax.jit(update, in_shardings=(host, host, dev, dev, None, None), out_shardings=(host, host))
