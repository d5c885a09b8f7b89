"""Everything benchmarks/gpu_check.py knows about the trainer (train.py, loop.py, offload.py, checkpoint.py):
adapt this file, and only this file, when their functions move or change.

`build` assembles the step as `jax_ema.train.train_and_evaluate` does for each EMA placement, with
`offload.build_step`: the EMA fused into the donated step (device, sharded) or averaged on the host after it
(host: `host_ema.HostStep`, overlapping the next step); `step(state, batch, count)` runs one optimizer update.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import checkpoint, ema, host_ema, loop, offload, optim, parallel, step as trainer
from jax_ema.models import create_model
from jax_ema.models.resnet import BasicBlock, ResNet

PLACEMENTS = ('none', 'device', 'host', 'sharded')  # 'none': no EMA; the others: offload.PLACEMENTS


@functools.cache
def flax_model(name: str, num_classes: int, dtype: str):
    """Our model computing in `dtype` with float32 params (bfloat16 = --amp). 'resnet-tiny' (--quick): the
    stem and one BasicBlock, the least that compiles a whole step in seconds (timm's side has one block per
    stage: its forward needs four). One object per (name, dtype), so the parts share its compiled steps."""
    if name == 'resnet-tiny':
        return ResNet(block=BasicBlock, layers=(1,), num_classes=num_classes, dtype=jnp.dtype(dtype))
    return create_model(name, num_classes, dtype=jnp.dtype(dtype), param_dtype=jnp.float32)


@functools.cache
def init(model, img_size: int):
    return jax.jit(functools.partial(model.init, train=False))(
        jax.random.PRNGKey(0), jnp.zeros((1, img_size, img_size, 3))
    )


@functools.cache
def _compiled(placement: str, decay: float):
    """The jitted step of a placement, shared by every build: each model and dtype compiles once."""
    cfg = None if placement == 'none' else ema.EmaConfig(decay=decay)
    built = offload.build_step(
        functools.partial(trainer.train_step, smoothing=0.1), cfg, 'device' if placement == 'none' else placement
    )
    return built


@functools.cache
def _optimizer():
    """One optimizer object: it is static in the TrainState, so a new one would recompile the step."""
    return optim.create_optimizer('sgd', lambda count: 0.01, 1e-4, 0.9)


def build(model, variables, placement: str, decay: float):
    """(state, step): a fresh TrainState with the EMA in `placement` and its step (offload.Step)."""
    cfg = None if placement == 'none' else ema.EmaConfig(decay=decay)
    state = trainer.create_train_state(model, _optimizer(), variables, cfg)
    state = offload.place_state(state, 'device' if placement == 'none' else placement)
    built = _compiled(placement, decay)  # a fresh Step (its pending-EMA count at 0) around the compiled step
    if isinstance(built, host_ema.HostStep):
        return state, host_ema.HostStep(built.train_step_fn, cfg, offload.to_host)
    return state, offload.Step(built.train_step_fn, built.ema_update)


def shard(batch: dict) -> dict:
    return parallel.shard_batch(batch)


def run_epoch(step, state, batches, updates: int, log_interval: int, start: int = 0):
    """One epoch of `updates` updates through the trainer's loop (NaN guard, logging); returns the state."""
    state, _, _ = loop.train_epoch(
        step,
        state,
        batches,
        epoch=0,
        num_epochs=1,
        updates_per_epoch=start + updates,
        first_update=start,
        schedule=lambda count: 0.01,
        log_interval=log_interval,
    )
    return step.flush(state, start + updates)


class InMemory:
    """The dataset interface `step.evaluate` reads (`eval_batches`, `num_examples`), from batches made in memory."""

    def __init__(self, batches: list, count: int):
        self.batches, self.count = batches, count
        self.num_examples = count * len(batches[0]['label'])

    def eval_batches(self, batch_size, process_index=0, process_count=1):
        for i in range(self.count):
            batch = self.batches[i % len(self.batches)]
            yield dict(batch, mask=np.ones(len(batch['label']), bool))


@functools.cache
def _eval_step(model):
    return jax.jit(functools.partial(trainer.eval_step, apply_fn=model.apply))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_eval_and_save(model, state, placement: str, dataset: InMemory, args) -> dict:
    """Evaluation of the raw and the EMA weights (as the trainer evaluates them; the second call of each is
    timed) and one checkpoint save (the second one: the first opens orbax), in seconds."""
    p_eval = _eval_step(model)
    size = dataset.count * args.batch_size

    def evaluate(params, stats):
        return trainer.evaluate(p_eval, params, stats, dataset, args.batch_size)

    raw = lambda: evaluate(state.params, state.batch_stats)  # noqa: E731
    raw()
    out = dict(eval_images_per_s=size / _timed(raw), ema_eval_images_per_s=None)
    if state.ema_params is not None:

        def ema_eval():
            ema_vars = (state.ema_params, state.ema_batch_stats)
            evaluate(*(offload.to_device(ema_vars) if placement != 'device' else ema_vars))

        ema_eval()
        out['ema_eval_images_per_s'] = size / _timed(ema_eval)
    folder = Path(tempfile.mkdtemp(prefix='gpu_check_ckpt_'))
    try:
        manager = checkpoint.open_manager(folder)
        meta = dict(
            model=args.model,
            num_classes=1000,
            img_size=args.img_size,
            epoch=0,
            position=0,
            ema=None if state.ema_params is None else {'decay': args.decay},
        )
        checkpoint.save(manager, state, meta, score=0.0)
        t0 = time.perf_counter()
        saved = checkpoint.save(manager, state.replace(step=state.step + 1), meta, score=1.0)
        out['checkpoint_s'] = time.perf_counter() - t0
        manager.close()
        out['checkpoint_bytes'] = sum(f.stat().st_size for f in saved.rglob('*') if f.is_file())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def state_bytes(state) -> dict:
    """Bytes of the state's arrays on device 0 ('device') and in host memory ('host', pinned_host)."""
    device0, out = jax.devices()[0], {'device': 0, 'host': 0}
    for array in jax.tree.leaves(state):
        kind = 'host' if array.sharding.memory_kind == 'pinned_host' else 'device'
        for shard_ in array.addressable_shards:
            if kind == 'host' or shard_.device == device0:
                out[kind] += shard_.data.nbytes
    return out


def _plan(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    plan = dict(
        argument=m.argument_size_in_bytes,
        output=m.output_size_in_bytes,
        alias=m.alias_size_in_bytes,
        temp=m.temp_size_in_bytes,
    )
    return dict(plan, peak=plan['argument'] + plan['output'] - plan['alias'] + plan['temp'])


def memory(step, state, batch) -> dict:
    """Bytes one placement holds and needs: its state on device 0 and in host memory, the EMA's share, XLA's
    plan of its programs, the peak that plan gives, and the device's high-water mark where it reports one."""
    held, plan = state_bytes(state), plans(step, state, batch)
    # the step holds the whole state (arguments), its outputs and temporaries; a device EMA updated apart
    # adds its update's temporaries to the state; the host EMA's packed weights (the pack's output) live
    # until their copy to the host lands, early in the next step: `peak_with_copy_in_flight` counts them
    # for the whole of the next step (an upper bound)
    peak = plan['step'].get('peak', 0)
    if 'ema_update' in plan:
        peak = max(peak, held['device'] + plan['ema_update'].get('temp', 0))
    in_flight = plan['pack'].get('output', 0) if 'pack' in plan else 0
    if 'pack' in plan:
        peak = max(peak, held['device'] + in_flight + plan['pack'].get('temp', 0))
    return dict(
        peak_with_copy_in_flight=(peak + in_flight) if peak else None,
        device_bytes=held['device'],
        host_bytes=held['host'],
        ema_bytes=ema_bytes(state),
        plan=plan,
        peak_device_bytes=peak or None,
        high_water_bytes=peak_bytes(),
    )


def plans(step, state, batch) -> dict:
    """XLA's memory plan (bytes per device) of the compiled step and, for the host EMA, of its update (the
    compiled programs are cached: nothing compiles again)."""
    jitted = getattr(step.train_step_fn, 'jitted', step.train_step_fn)  # host: the step without the EMA
    without = state.replace(ema_params=None, ema_batch_stats=None)
    if isinstance(step, host_ema.HostStep):  # the step without the EMA, and the packing of the new weights
        pack = host_ema.packer(step.averager.layouts()).lower(state.params, state.batch_stats).compile()
        return {'step': _plan(jitted.lower(without, batch).compile()), 'pack': _plan(pack)}
    if step.ema_update is None:
        return {'step': _plan(jitted.lower(state, batch).compile())}
    update = step.ema_update.lower(
        state.ema_params, state.ema_batch_stats, state.params, state.batch_stats, state.step, 1
    ).compile()
    return {'step': _plan(jitted.lower(without, batch).compile()), 'ema_update': _plan(update)}


def peak_bytes():
    """The process's device high-water mark (device.memory_stats; None where the backend has none)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get('peak_bytes_in_use')


def ema_bytes(state) -> int:
    return sum(t.flat.nbytes for t in (state.ema_params, state.ema_batch_stats) if t is not None)


def time_host_average(state, reps: int) -> dict:
    """Seconds (wall and process CPU, medians) of one host EMA update of `state`'s EMA (host_ema.Averager),
    the new weights already in host memory: what the host spends per update besides the copy."""
    averager = host_ema.Averager(ema.EmaConfig(), state.ema_params, state.ema_batch_stats)
    new = [np.asarray(f) for f, _ in host_ema.packer(averager.layouts())(state.params, state.batch_stats)]
    walls, cpus = [], []
    for i in range(reps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        averager.update(new, [[], []], 100 + i, 1)
        if i:  # the first one warms up the step-size function and the scratch
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return dict(wall_s=float(np.median(walls)), cpu_s=float(np.median(cpus)), floats=sum(f.size for f in new))
