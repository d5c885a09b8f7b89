"""The host EMA (`--model-ema-force-cpu`): averaged on the host, overlapping the next device step.

Per EMA update only the new weights cross the bus, once, device to host:

    main thread   step N (jitted, donated) -> pack N (one flat float32 vector on the device) ->
                  copy_to_host_async -> hand the update to the worker -> step N+1 ...
    worker        wait for pack N's host copy -> `ema.update` jitted for the CPU backend, the EMA's
                  buffers donated (updated in place)

The EMA itself is a pair of CPU-backend arrays this module owns (`[n]`, or `[members, n]` for a stack),
never on the accelerator, never donated to anything but this CPU update (a host buffer donated into a
device computation aborts). The update is `ema.update` itself, so warmup, update-every-K (the gap folded in),
extra decays, power EMAs and exclude_buffers behave as on the device, and its lerp rounds as XLA's and torch's
(a fused multiply-add): the host EMA equals the device EMA and timm's `ModelEmaV3(device='cpu')` bit for bit.
Measured against numpy over the same buffer (benchmarks/bench_host_ema.py, docs/gpu.md): XLA:CPU takes a
third of the CPU time of a numpy lerp rounded the same way, and less than numpy's plain float32 lerp.

The host copy of the new weights becomes a CPU array without a copy where it is 64-byte aligned (else it is
copied once into an aligned landing buffer). At most one update is in flight: the main thread waits for
update N-1 after dispatching step N, so the host averages while the device computes and the device keeps a
queue. The state carries the EMA as of the last `flush` (pinned_host arrays, as checkpoints, snapshots and
evaluation read them); `flush` waits for the worker and copies the buffers out. A state whose EMA is not the
one last handed out (a fresh state, a restored one) is adopted: its EMA becomes the buffers.
"""

from __future__ import annotations

import concurrent.futures
import functools

import jax
import numpy as np

from jax_ema import ema

ALIGN = 64  # bytes: a host buffer so aligned becomes a CPU array without a copy


def _cpu_update(cfg: ema.EmaConfig, specs, ema_p, ema_s, new_p, new_s, step, gap):
    """`ema.update` on flat buffers (the non-float leaves are kept apart, on the host)."""
    trees = [ema.FlatTree(flat, (), spec) for flat, spec in zip((ema_p, ema_s, new_p, new_s), specs * 2)]
    ema_p, ema_s = ema.update(cfg, *trees, step, gap)
    return ema_p.flat, ema_s.flat


class Averager:
    """The host EMA's buffers (CPU-backend arrays) and their jitted, donated update."""

    def __init__(self, cfg: ema.EmaConfig, ema_params: ema.FlatTree, ema_stats: ema.FlatTree):
        self.cfg, self.spec = cfg, (ema_params.spec, ema_stats.spec)
        self.cpu = jax.local_devices(backend='cpu')[0]
        self.flat = [jax.device_put(jax.device_get(t.flat), self.cpu, may_alias=False) for t in (ema_params, ema_stats)]
        self.others = [list(jax.device_get(t.others)) for t in (ema_params, ema_stats)]
        self.landing = {}  # aligned host buffers for new weights that arrive unaligned
        self._update = jax.jit(functools.partial(_cpu_update, cfg, self.spec), donate_argnums=(0, 1))

    def layouts(self) -> tuple:
        """(shape, dtype, spec) of the params and stats buffers (what `packer` packs the weights as)."""
        return tuple((f.shape, f.dtype, s) for f, s in zip(self.flat, self.spec))

    def update(self, new_flats, new_others, step: int, gap: int) -> None:
        """Fold `gap` updates ending at update `step` in; new_flats: the packed weights (host numpy or CPU
        arrays). Returns when the buffers hold the result."""
        new = [self._on_cpu(x, i) for i, x in enumerate(new_flats)]
        self.flat = list(self._update(*self.flat, *new, np.int32(step), np.int32(gap)))
        jax.block_until_ready(self.flat)  # the landing buffers may be written again from here on
        self.others = [[np.asarray(n, o.dtype) for n, o in zip(ns, os_)] for ns, os_ in zip(new_others, self.others)]

    def _on_cpu(self, x, i: int):
        """`x` as an array on the CPU backend, without a copy where it can be."""
        if isinstance(x, jax.Array) and x.devices() == {self.cpu}:
            return x
        x = np.asarray(x)
        if x.ctypes.data % ALIGN:
            if i not in self.landing or self.landing[i][1].shape != x.shape:
                raw = np.empty(x.nbytes + ALIGN, np.uint8)
                start = -raw.ctypes.data % ALIGN
                self.landing[i] = raw, raw[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
            np.copyto(self.landing[i][1], x)
            x = self.landing[i][1]
        return jax.device_put(x, self.cpu, may_alias=True)

    def trees(self):
        """(ema_params, ema_stats) as FlatTrees over host numpy copies of the buffers."""
        return tuple(ema.FlatTree(np.array(f), o, s) for f, o, s in zip(self.flat, self.others, self.spec))


@functools.cache
def packer(layouts):
    """jit(params, stats) -> ((flat, others), (flat, others)): the weights as the EMA holds them, for EMAs of
    `layouts` ((shape, dtype, spec) of its params and stats FlatTrees)."""
    trees = [ema.FlatTree(jax.ShapeDtypeStruct(shape, dtype), (), spec) for shape, dtype, spec in layouts]
    return jax.jit(lambda params, stats: (trees[0].pack(params), trees[1].pack(stats)))


def _first_shard(x):
    """The copy on this process's first device of a replicated array (one host copy, not one per device)."""
    return x.addressable_shards[0].data


class HostStep:
    """The epoch loop's step (offload.Step's interface) for a host EMA: the donated step without the EMA
    (`train_step_fn`, offload's `_beside_the_ema`), then every `every` updates the new weights packed,
    copied to the host and averaged there by the worker, overlapping the next step. `flush(state, count)`
    folds in the pending updates, waits, and puts the EMA into the state (pinned_host, `to_host`)."""

    ema_update = None  # no jitted EMA update on the device

    def __init__(self, train_step_fn, cfg: ema.EmaConfig, to_host, every: int = 1, last: int = 0):
        self.train_step_fn, self.cfg, self.to_host = train_step_fn, cfg, to_host
        self.every, self.last = every, last
        self.averager, self.lent, self.dirty = None, None, False
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='host-ema-worker')
        self.pending = None  # the Future of the update in flight

    def __call__(self, state, batch, count: int):
        state, metrics = self.train_step_fn(state, batch)
        if count % self.every == 0:
            self._submit(state, count)
        return state, metrics

    def flush(self, state, count: int):
        if count > self.last:
            self._submit(state, count)
        self.wait()
        if not self.dirty or not self._holds(state):  # nothing folded in since the state's EMA was made
            return state
        ema_params, ema_stats = self.to_host(self.averager.trees())
        jax.block_until_ready((ema_params, ema_stats))
        self.lent, self.dirty = (ema_params, ema_stats), False
        return state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)

    def wait(self) -> None:
        """Until the update in flight is folded in (its error, if any, raised here)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def _holds(self, state) -> bool:
        return self.lent is not None and self.lent[0] is state.ema_params and self.lent[1] is state.ema_batch_stats

    def _submit(self, state, count: int) -> None:
        if self.averager is None or not self._holds(state):
            self._adopt(state)
        pack = packer(self.averager.layouts())
        (flat_p, others_p), (flat_s, others_s) = pack(state.params, state.batch_stats)
        new = [_first_shard(flat_p), _first_shard(flat_s)]
        for x in new:
            x.copy_to_host_async()  # the one device->host copy, behind the step on the device
        gap = count - self.last
        self.last, self.dirty = count, True
        self.wait()  # the previous update, averaged while this step ran: one update in flight at most
        self.pending = self.worker.submit(self._average, new, [others_p, others_s], count, gap)

    def _average(self, new, others, count, gap):
        cpu = {self.averager.cpu}
        flats = [x if x.devices() == cpu else np.asarray(x) for x in new]  # waits for the host copy
        new.clear()  # the device copies freed as soon as they have landed
        self.averager.update(flats, [jax.device_get(o) for o in others], count, gap)

    def _adopt(self, state) -> None:
        """Make the state's EMA (wherever it is) the host buffer."""
        self.wait()
        self.averager = Averager(self.cfg, state.ema_params, state.ema_batch_stats)
        self.lent = (state.ema_params, state.ema_batch_stats)
