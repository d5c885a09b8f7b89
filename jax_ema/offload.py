"""Where the EMA lives: on every device (`device`), in host memory (`host`), or split over the devices
(`sharded`). README, "Memory: where the EMA lives", has the measured bytes.

device   a full replicated copy per device, updated inside the donated train step (the default).
host     `--model-ema-force-cpu`: replicated in the `pinned_host` memory kind. The device step stays the
         donated step of an EMA-less run, and a second jitted function (`ema_update`) updates the host EMA
         from the step's new params, every update or every K; both dispatch asynchronously. We do not fuse
         the two with memory-kind shardings because the fused step could no longer donate its state (a
         host buffer donated into a device computation aborts the process), and without donation the
         device would hold two copies of the weights, the memory the flag exists to save. Inside the update
         the EMA is brought to device memory, averaged and sent back (`out_shardings`), the recipe of JAX's
         host-offloading guide.
sharded  `--model-ema-shard`: the EMA's flat float32 buffer (`ema.FlatTree`) is split along its last axis
         over the mesh's 'data' axis, zero-padded to a multiple of the device count, so each device holds
         1/N of every float byte (the non-float leaves, a few scalars, stay replicated). Each device updates
         its slice from its own copy of the replicated weights: no communication. The update is fused into
         the donated train step; the new weights are pinned replicated there, else XLA's sharding
         propagation would push the EMA's sharding back into the optimizer (and all-gather the weights).
         Evaluation and checkpoints gather it (`to_device`, `parallel.gather`).
"""
from __future__ import annotations

import functools

import jax

from jax_ema import ema, parallel
from jax_ema.errors import UserError

PLACEMENTS = ('device', 'host', 'sharded')


def placement(force_cpu: bool, shard: bool) -> str:
    """The EMA's placement from `--model-ema-force-cpu` and `--model-ema-shard`."""
    if force_cpu and shard:
        raise UserError('--model-ema-force-cpu and --model-ema-shard exclude each other (host memory or 1/N '
                        'per device); give one of them')
    return 'host' if force_cpu else 'sharded' if shard else 'device'


def host_sharding() -> jax.sharding.Sharding:
    """Replicated over the mesh, in pinned host memory."""
    return parallel.replicated('pinned_host')


def device_sharding() -> jax.sharding.Sharding:
    return parallel.replicated('device')


def _sharded(ema_tree):
    """Shardings for a FlatTree split over the devices: its flat buffer's last axis, others replicated."""
    return ema.FlatTree(parallel.last_axis_sharding(ema_tree.flat.ndim),
                        [device_sharding()] * len(ema_tree.others), ema_tree.spec)


def place(ema_tree, where: str):
    """A copy of the EMA (a FlatTree) in its placement (`PLACEMENTS`)."""
    if where == 'host':
        return to_host(ema_tree)
    if where == 'sharded':
        ema_tree = ema_tree.padded(len(parallel.mesh().devices.flat))
        return jax.device_put(ema_tree, _sharded(ema_tree))
    return jax.device_put(ema_tree, device_sharding())


def to_host(tree):
    """A copy of `tree` in pinned host memory."""
    return jax.device_put(tree, host_sharding())


def to_device(tree):
    """A copy of `tree` whole on every device, in device memory (for evaluation and saving)."""
    return jax.device_put(parallel.gather(tree), device_sharding())


def memory_kinds(tree) -> set[str]:
    return {leaf.sharding.memory_kind for leaf in jax.tree.leaves(tree)}


def _keep_sharded(ema_tree):
    flat = jax.lax.with_sharding_constraint(ema_tree.flat, parallel.last_axis_sharding(ema_tree.flat.ndim))
    return ema.FlatTree(flat, ema_tree.others, ema_tree.spec)


def sharded_update(cfg: ema.EmaConfig, ema_params, ema_stats, params, stats, step, gap=1):
    """`ema.update` for a sharded EMA inside a jitted function: the weights pinned replicated (each
    device reads its own copy), the EMA kept sharded; the compiled update has no collective."""
    params, stats = jax.lax.with_sharding_constraint((params, stats), device_sharding())
    ema_params, ema_stats = ema.update(cfg, ema_params, ema_stats, params, stats, step, gap)
    return _keep_sharded(ema_params), _keep_sharded(ema_stats)


def fuse_sharded(train_step_without_ema, cfg: ema.EmaConfig):
    """A train step (state, batch) -> (state, metrics) that also updates a sharded EMA, as one function
    to jit and donate: `train_step_without_ema` sees a state without EMA."""
    def step(state, batch):
        ema_params, ema_stats = state.ema_params, state.ema_batch_stats
        state, metrics = train_step_without_ema(state.replace(ema_params=None, ema_batch_stats=None), batch)
        ema_params, ema_stats = sharded_update(cfg, ema_params, ema_stats, state.params, state.batch_stats,
                                               state.step)
        return state.replace(ema_params=ema_params, ema_batch_stats=ema_stats), metrics
    return step


@functools.lru_cache(maxsize=None)
def ema_update(cfg: ema.EmaConfig, where: str):
    """jit(ema_params, ema_stats, params, stats, step, gap) -> new EMA, for an EMA updated outside the
    step (`where` in PLACEMENTS; see loop.Stepper).

    On the device, whole or sharded, the EMA buffers are donated (updated in place). On the host they are
    never donated (that aborts); the update runs on the device between two transfers, and `out_shardings`
    sends it back.
    """
    if where not in PLACEMENTS:
        raise ValueError(f'unknown EMA placement {where!r}; use one of {PLACEMENTS}')
    if where == 'sharded':
        return jax.jit(functools.partial(sharded_update, cfg), donate_argnums=(0, 1))

    def update(ema_params, ema_stats, params, stats, step, gap):
        if where == 'host':
            ema_params, ema_stats = jax.device_put((ema_params, ema_stats), device_sharding())
        return ema.update(cfg, ema_params, ema_stats, params, stats, step, gap)

    if where != 'host':
        return jax.jit(update, donate_argnums=(0, 1))
    host, dev = host_sharding(), device_sharding()
    return jax.jit(update, in_shardings=(host, host, dev, dev, None, None), out_shardings=(host, host))
