"""Where the EMA lives — on every device (`device`), in host memory (`host`), or split over the devices
(`sharded`) — and the one step builder (`build_step`) that decides, from that placement, how the epoch
loop's step updates it. Nothing else in the trainer branches on the placement.

device   a full replicated copy per device, updated inside the donated train step (the default).
host     `--model-ema-force-cpu`: averaged on the host (host_ema.py), overlapping the next device step.
         The device step is the donated step without the EMA; after it the new weights are packed into
         one flat vector and copied to the host (the one copy across the bus per update), where a worker
         thread folds them into the EMA with `ema.update` jitted for the CPU backend. The state carries
         that EMA, as of the last `flush`, replicated in the `pinned_host` memory kind (what checkpoints,
         snapshots and evaluation read).
         Nothing on the host is ever donated into a device computation (that aborts the process).
sharded  `--model-ema-shard`: the EMA's flat float32 buffer (`ema.FlatTree`) is split along its last axis
         over the mesh's 'data' axis, zero-padded to a multiple of the device count, so each device holds
         1/N of every float byte (the non-float leaves, a few scalars, stay replicated). Each device updates
         its slice from its own copy of the replicated weights: no communication. The update is fused into
         the donated train step (`sharded_update`); the new weights are pinned replicated there, else XLA's
         sharding propagation would push the EMA's sharding back into the optimizer (and all-gather the
         weights). Evaluation (`ema_for_eval`) and checkpoints (`parallel.gather`) gather it.

`--model-ema-update-every K` > 1 takes the device and sharded EMAs out of the step too: the EMA is then
updated every K updates by `ema_update`, folding in K updates at once (the host EMA likewise, on the host).
"""

from __future__ import annotations

import functools

import jax

from jax_ema import ema, host_ema, parallel

PLACEMENTS = ('device', 'host', 'sharded')


def host_sharding() -> jax.sharding.Sharding:
    """Replicated over the mesh, in pinned host memory."""
    return parallel.replicated('pinned_host')


def device_sharding() -> jax.sharding.Sharding:
    return parallel.replicated('device')


def _sharded(ema_tree):
    """Shardings for a FlatTree split over the devices: its flat buffer's last axis, others replicated."""
    return ema.FlatTree(
        parallel.last_axis_sharding(ema_tree.flat.ndim), [device_sharding()] * len(ema_tree.others), ema_tree.spec
    )


def place(ema_tree, placement: str):
    """A copy of the EMA (a FlatTree) in its placement (`PLACEMENTS`)."""
    if placement == 'host':
        return to_host(ema_tree)
    if placement == 'sharded':
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


@functools.cache
def ema_update(cfg: ema.EmaConfig, placement: str):
    """jit(ema_params, ema_stats, params, stats, step, gap) -> new EMA, for a device or sharded EMA updated
    outside the step (`--model-ema-update-every K`; see `build_step`); its buffers are donated (updated in
    place). The host EMA is averaged on the host (host_ema.HostStep), not by a jitted function."""
    if placement not in ('device', 'sharded'):
        raise ValueError(f'no jitted EMA update for placement {placement!r}; the host EMA is host_ema.HostStep')
    if placement == 'sharded':
        return jax.jit(functools.partial(sharded_update, cfg), donate_argnums=(0, 1))
    return jax.jit(functools.partial(ema.update, cfg), donate_argnums=(0, 1))


def place_state(state, placement: str):
    """`state` replicated on every device, its EMA (when on) in `placement`; the EMA is placed from
    where it is, never replicated on the devices first."""
    ema_vars = state.ema_params, state.ema_batch_stats
    state = parallel.replicate(state.replace(ema_params=None, ema_batch_stats=None))
    if ema_vars[0] is None:
        return state
    return state.replace(ema_params=place(ema_vars[0], placement), ema_batch_stats=place(ema_vars[1], placement))


def ema_for_eval(state):
    """The state's (ema_params, ema_batch_stats) where an evaluation reads them: a device EMA as it is,
    a sharded one gathered whole onto every device, a host one read into host numpy once (`to_device`
    then sends one member at a time, so the devices never hold a whole host stack)."""
    ema_vars = state.ema_params, state.ema_batch_stats
    if memory_kinds(ema_vars) == {'pinned_host'}:
        return jax.device_get(ema_vars)
    return to_device(ema_vars)


class Step:
    """What the epoch loop calls: `step(state, batch, count) -> (state, metrics)`, `count` being the
    update count after this update (known on the host: no sync). Made by `build_step`.

    With `ema_update` (the EMA outside the jitted step) the EMA is updated from the new weights every
    `every` updates, folding in the updates since the last one; `flush(state, count)` folds in the
    pending ones (the trainer calls it before evaluating, saving and snapshotting). Otherwise flush
    returns the state as it is."""

    def __init__(self, train_step_fn, ema_update=None, every: int = 1, last: int = 0):
        self.train_step_fn, self.ema_update, self.every, self.last = train_step_fn, ema_update, every, last

    def __call__(self, state, batch, count: int):
        state, metrics = self.train_step_fn(state, batch)
        if self.ema_update is not None and count % self.every == 0:
            state = self._apply(state, count)
        return state, metrics

    def flush(self, state, count: int):
        if self.ema_update is not None and count > self.last:
            state = self._apply(state, count)
        return state

    def _apply(self, state, count):
        ema_params, ema_stats = self.ema_update(
            state.ema_params, state.ema_batch_stats, state.params, state.batch_stats, state.step, count - self.last
        )
        self.last = count
        return state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)


def _beside_the_ema(train_step_without_ema, compiler_options=None):
    """`train_step_without_ema` jitted and donated, called on the state without its EMA (which stays
    where it is: a host buffer is never donated into a device computation) and returning it with it."""
    jitted = jax.jit(train_step_without_ema, donate_argnums=0, compiler_options=compiler_options)

    def step(state, batch):
        ema_vars = state.ema_params, state.ema_batch_stats
        state, metrics = jitted(state.replace(ema_params=None, ema_batch_stats=None), batch)
        return state.replace(ema_params=ema_vars[0], ema_batch_stats=ema_vars[1]), metrics

    step.jitted = jitted  # for inspection (compiled memory plans in benchmarks/gpu_check_trainer.py)
    return step


def build_step(
    train_step_fn,
    ema_cfg: ema.EmaConfig | None,
    placement: str = 'device',
    last: int = 0,
    compiler_options: dict | None = None,
) -> Step | host_ema.HostStep:
    """The step the epoch loop calls, for the EMA settings and placement (the one place that decides it).

    `train_step_fn(state, batch, ema_cfg, ema_update=...)` is the pure step with the run's settings bound
    (`functools.partial(step.train_step, smoothing=..., accum_steps=..., seed=...)`). `last` is the
    update count the EMA has folded in (the resumed step). `compiler_options`: XLA's, for the jitted
    step (models.step_compiler_options: --grad-checkpointing on the CPU).
      EMA off                           train_step_fn jitted, state donated
      device / sharded, update_every 1  the EMA update fused into the jitted, donated step (sharded:
                                        `sharded_update`, no collective)
      host                              the step without the EMA (`_beside_the_ema`), the EMA averaged on
                                        the host every K updates, overlapping the next step (host_ema.HostStep)
      device / sharded, update_every K  the step without the EMA + `ema_update(cfg, placement)` every K
                                        updates; `flush` folds in the pending ones
    """
    if placement not in PLACEMENTS:
        raise ValueError(f'unknown EMA placement {placement!r}; use one of {PLACEMENTS}')
    jit = functools.partial(jax.jit, donate_argnums=0, compiler_options=compiler_options)
    if ema_cfg is None:
        return Step(jit(functools.partial(train_step_fn, ema_cfg=None)))
    if placement != 'host' and ema_cfg.update_every == 1:
        update = sharded_update if placement == 'sharded' else ema.update
        return Step(jit(functools.partial(train_step_fn, ema_cfg=ema_cfg, ema_update=update)))
    without_ema = _beside_the_ema(functools.partial(train_step_fn, ema_cfg=None), compiler_options)
    if placement == 'host':
        return host_ema.HostStep(without_ema, ema_cfg, to_host, ema_cfg.update_every, last)
    return Step(
        without_ema,
        ema_update(ema_cfg, placement),
        every=ema_cfg.update_every,
        last=last,
    )
