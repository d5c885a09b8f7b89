"""The host EMA (`--model-ema-force-cpu`): averaged on the host, overlapping the next device step.

Per EMA update only the new weights cross the bus, once, device to host:

    main thread   step N (jitted, donated) -> pack N (one flat float32 vector on the device) ->
                  copy_to_host_async -> hand the update to the worker -> step N+1 ...
    worker        wait for pack N's host copy -> ema <- lerp(ema, new, size) in numpy, in place,
                  over `threads` slices of the flat buffer (numpy leaves the GIL while it computes)

The EMA itself is a numpy buffer this module owns (`[n]`, or `[members, n]` for a stack), never on the
device, never donated to anything (a host buffer donated into a device computation aborts). The step
sizes are `ema.step_sizes` (the same code as on the device, jitted for the CPU), so warmup, update-every-K
(the gap folded in), extra decays and power EMAs behave as on the device. The lerp is `ema.lerp`'s:
`old + w * (new - old)` for w < 0.5, else `new - (new - old) * (1 - w)` (exact copy at w = 1), written as
numpy ufuncs over cache-sized blocks; it differs from XLA's only where XLA contracts a multiply-add.

At most one update is in flight: the main thread waits for update N-1 after dispatching step N, so the
host averages while the device computes and the device keeps a queue. The state carries the EMA as of the
last `flush` (pinned_host arrays, as checkpoints, snapshots and evaluation read them); `flush` waits for
the worker and copies the buffer out. A state whose EMA is not the one last handed out (a fresh state, a
restored one) is adopted: its EMA becomes the buffer.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import numpy as np

from jax_ema import ema

BLOCK = 1 << 16  # elements per numpy call: the temporaries stay in cache
DEFAULT_THREADS = min(4, max(1, (os.cpu_count() or 1) // 4))  # a quarter of the cores, at most 4


def lerp_into(old: np.ndarray, new: np.ndarray, weight, scratch) -> None:
    """old <- lerp(old, new, weight) in place, rounded as torch.lerp and XLA's `ema.lerp` (a fused
    multiply-add): `old + weight * (new - old)` for weight < 0.5, else `new - (new - old) * (1 - weight)`,
    an exact copy at weight 1. `scratch` is (a buffer of old's dtype, a float64 one), each at least old's
    size. numpy has no fused multiply-add; for float32 the product is formed exactly in float64 and the
    sum rounded once more, so only a double rounding (about 2**-29 of the elements) can differ by one ulp."""
    diff, wide = scratch[0][: old.size], scratch[1][: old.size]
    np.subtract(new, old, out=diff)
    near_old = weight < 0.5
    factor = weight if near_old else weight.dtype.type(1) - weight
    if old.dtype == np.float64:  # x64: no wider type at hand, one rounding more than a fused multiply-add
        np.multiply(diff, factor, out=diff)
        (np.add(old, diff, out=old) if near_old else np.subtract(new, diff, out=old))
        return
    np.multiply(diff, np.float64(factor), out=wide, dtype=np.float64)  # exact: 24 x 24 bits
    (np.add(wide, old, out=wide) if near_old else np.subtract(new, wide, out=wide))
    np.copyto(old, wide, casting='same_kind')


class Averager:
    """The host EMA's buffers and the threads that average into them."""

    def __init__(self, cfg: ema.EmaConfig, ema_params: ema.FlatTree, ema_stats: ema.FlatTree, threads: int):
        self.cfg, self.threads = cfg, max(1, int(threads))
        self.spec = ema_params.spec, ema_stats.spec
        self.flat = [np.array(jax.device_get(t.flat), copy=True) for t in (ema_params, ema_stats)]
        self.others = [list(t.others) for t in (ema_params, ema_stats)]
        self.pool = concurrent.futures.ThreadPoolExecutor(self.threads, 'host-ema') if self.threads > 1 else None
        self.scratch = [(np.empty(BLOCK, self.flat[0].dtype), np.empty(BLOCK)) for _ in range(self.threads)]
        self.cpu = jax.local_devices(backend='cpu')[0]
        self.sizes = jax.jit(functools.partial(ema.step_sizes, cfg))

    def layouts(self) -> tuple:
        """(shape, dtype, spec) of the params and stats buffers (what `_packer` packs the weights as)."""
        return tuple((f.shape, f.dtype, s) for f, s in zip(self.flat, self.spec))

    def step_sizes(self, step: int, gap: int) -> np.ndarray:
        """One step size per member ([members], or [1] for a single EMA), in the EMA dtype."""
        put = functools.partial(jax.device_put, device=self.cpu)
        sizes = np.asarray(self.sizes(put(np.int32(step)), put(np.int32(gap))), self.flat[0].dtype)
        return sizes.reshape(-1)

    def update(self, new_flats, new_others, step: int, gap: int) -> None:
        """Fold `gap` updates ending at update `step` in: new_flats are the packed weights (host numpy)."""
        sizes = self.step_sizes(step, gap)
        jobs = []
        for i, (buffer, new) in enumerate(zip(self.flat, new_flats)):
            rows = buffer.reshape(-1, buffer.shape[-1])
            if i == 1 and self.cfg.exclude_buffers:  # timm's exclude_buffers: statistics copied
                rows[...] = new
                continue
            jobs += [(row, new, w) for row, w in zip(rows, np.broadcast_to(sizes, (len(rows),)))]
        self._run(jobs)
        self.others = [[np.asarray(n, o.dtype) for n, o in zip(ns, os_)] for ns, os_ in zip(new_others, self.others)]

    def _run(self, jobs) -> None:
        """Every (row, new, weight) lerp, split in `threads` stripes of blocks (one per thread)."""
        blocks = [
            (row[s : s + BLOCK], new[s : s + BLOCK], w) for row, new, w in jobs for s in range(0, row.size, BLOCK)
        ]

        def stripe(k):
            for old, new, w in blocks[k :: self.threads]:
                lerp_into(old, new, w, self.scratch[k])

        if self.threads == 1:
            stripe(0)
        else:
            list(self.pool.map(stripe, range(self.threads)))

    def trees(self):
        """(ema_params, ema_stats) as FlatTrees over copies of the buffers, host numpy."""
        return tuple(ema.FlatTree(f.copy(), o, s) for f, o, s in zip(self.flat, self.others, self.spec))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


@functools.cache
def _packer(layouts):
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

    def __init__(self, train_step_fn, cfg: ema.EmaConfig, to_host, every: int = 1, last: int = 0, threads=None):
        self.train_step_fn, self.cfg, self.to_host = train_step_fn, cfg, to_host
        self.every, self.last = every, last
        self.threads = DEFAULT_THREADS if threads is None else threads
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
        pack = _packer(self.averager.layouts())
        (flat_p, others_p), (flat_s, others_s) = pack(state.params, state.batch_stats)
        new = [_first_shard(flat_p), _first_shard(flat_s)]
        for x in new:
            x.copy_to_host_async()  # the one device->host copy, behind the step on the device
        gap = count - self.last
        self.last, self.dirty = count, True
        self.wait()  # the previous update, averaged while this step ran: one update in flight at most
        self.pending = self.worker.submit(self._average, new, [others_p, others_s], count, gap)

    def _average(self, new, others, count, gap):
        flats = [np.asarray(x) for x in new]  # waits for the host copy (the GIL released)
        new.clear()  # the device copies freed as soon as they have landed
        self.averager.update(flats, [jax.device_get(o) for o in others], count, gap)

    def _adopt(self, state) -> None:
        """Make the state's EMA (wherever it is) the host buffer."""
        self.wait()
        if self.averager is not None:
            self.averager.close()
        self.averager = Averager(self.cfg, state.ema_params, state.ema_batch_stats, self.threads)
        self.lent = (state.ema_params, state.ema_batch_stats)
