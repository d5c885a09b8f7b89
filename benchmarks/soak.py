"""Soak test: does the trainer's step leak host memory over many updates, and how fast is it?

    python benchmarks/soak.py [--steps 10000] [--host-ema] [--model tiny|resnet18|...] [--img-size 32] [-b 8]
                              [--out soak.json]

Runs the trainer's own pieces: the donated jitted `train.train_step` with the EMA (or, with
--host-ema, the step without it and the EMA averaged on the host, `host_ema.HostStep`), driven by
`loop.train_epoch` (loss summed on device, one host sync every --log-interval updates). Every step is
fed a fresh numpy copy of one of a few fixed random batches, as the input pipeline hands the trainer
numpy arrays. Resident memory (VmRSS from /proc/self/status) is read after --warmup steps (compilation
and allocator warm-up done) and after every --chunk steps; the report gives the growth from warm-up to
the end in percent (the bar: < 5%), the number of live JAX arrays at both points, and steps/s.

The default model, `tiny`, is a two-block ResNet of the project's own BasicBlock and BatchNorm (16 and
32 channels, ~25k parameters): a leak per step shows as clearly, and 10,000 steps take minutes on two
CPU cores, where resnet18 (11M parameters, whose optimizer and EMA updates dominate a CPU step) runs at
~3-4 steps/s there. Any name of jax_ema.models works too.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import ema, loop, offload, optim
from jax_ema.models import create_model
from jax_ema.models.layers import BatchNorm, conv
from jax_ema.models.resnet import BasicBlock
from jax_ema.train import create_train_state, train_step

GROWTH_BAR_PCT = 5.0


class TinyResNet(nn.Module):
    """3x3 stem (16 ch), BasicBlock(16), BasicBlock(32, stride 2), average pool, fc."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(BatchNorm(name='bn1')(conv(16, 3, dtype=jnp.float32, name='conv1')(x), train))
        x = BasicBlock(16, name='layer1_0')(x, train)
        x = BasicBlock(32, 2, downsample=True, name='layer2_0')(x, train)
        return nn.Dense(self.num_classes, name='fc')(x.mean(axis=(1, 2)))


def rss_mb() -> float:
    """Resident set size of this process in MiB (VmRSS), after a garbage collection."""
    gc.collect()
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


def fixed_batches(count, batch_size, img_size, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            'image': rng.normal(size=(batch_size, img_size, img_size, 3)).astype(np.float32),
            'label': rng.integers(0, num_classes, size=batch_size).astype(np.int32),
        }
        for _ in range(count)
    ]


def feed(batches, steps):
    """`steps` batches, each a new numpy copy (a new host buffer per step, as the input pipeline's)."""
    for i in range(steps):
        yield {k: v.copy() for k, v in batches[i % len(batches)].items()}


def build(args):
    """(step, state, schedule) exactly as train.train_and_evaluate wires them."""
    model = TinyResNet(args.num_classes) if args.model == 'tiny' else create_model(args.model, args.num_classes)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, args.img_size, args.img_size, 3)), train=False)
    schedule = optim.create_lr_schedule('cosine', 0.01, 1, args.steps, 0, 1e-5, 0.0, True, 90, 0.1, 0, False)[0]
    tx = optim.create_optimizer('sgd', schedule, 1e-4, 0.9, None, None)
    ema_cfg = ema.EmaConfig(decay=args.decay)
    state = create_train_state(model, tx, variables, ema_cfg)
    if args.host_ema:
        state = state.replace(
            ema_params=offload.to_host(state.ema_params), ema_batch_stats=offload.to_host(state.ema_batch_stats)
        )
    step = offload.build_step(
        functools.partial(train_step, smoothing=0.1), ema_cfg, 'host' if args.host_ema else 'device'
    )
    return step, state, schedule


def run(args) -> dict:
    step, state, schedule = build(args)
    batches = fixed_batches(16, args.batch_size, args.img_size, args.num_classes)
    chunks = [args.warmup] + [args.chunk] * ((args.steps - args.warmup) // args.chunk)
    if sum(chunks) < args.steps:
        chunks.append(args.steps - sum(chunks))
    samples, done, t_start = [], 0, None
    for i, n in enumerate(chunks):
        state, _, _ = loop.train_epoch(
            step,
            state,
            feed(batches, n),
            epoch=i,
            num_epochs=len(chunks),
            updates_per_epoch=n,
            first_update=0,
            schedule=schedule,
            log_interval=args.log_interval,
        )
        jax.block_until_ready(state)
        done += n
        if i == 0:
            t_start = time.perf_counter()
        samples.append(
            {
                'step': done,
                'rss_mb': rss_mb(),
                'live_arrays': len(jax.live_arrays()),
                'elapsed_s': time.perf_counter() - t_start,
            }
        )
        print(
            f'step {done:>6}: RSS {samples[-1]["rss_mb"]:8.1f} MiB, {samples[-1]["live_arrays"]} live arrays',
            flush=True,
        )
    warm, end = samples[0], samples[-1]
    timed_steps = done - args.warmup
    growth = 100.0 * (end['rss_mb'] - warm['rss_mb']) / warm['rss_mb']
    return dict(
        model=args.model,
        params=sum(int(np.size(x)) for x in jax.tree.leaves(state.params)),
        img_size=args.img_size,
        batch_size=args.batch_size,
        steps=done,
        warmup=args.warmup,
        host_ema=args.host_ema,
        decay=args.decay,
        device=str(jax.devices()[0]),
        backend=jax.default_backend(),
        machine=platform.machine(),
        jax_version=jax.__version__,
        rss_warmup_mb=warm['rss_mb'],
        rss_end_mb=end['rss_mb'],
        rss_peak_mb=max(s['rss_mb'] for s in samples),
        growth_pct=growth,
        live_arrays_warmup=warm['live_arrays'],
        live_arrays_end=end['live_arrays'],
        steps_per_s=timed_steps / end['elapsed_s'] if timed_steps else None,
        step=int(jax.device_get(state.step)),
        passed=growth < GROWTH_BAR_PCT,
        samples=samples,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=10_000)
    p.add_argument('--warmup', type=int, default=200, help='steps before the first memory reading')
    p.add_argument('--chunk', type=int, default=500, help='steps between memory readings')
    p.add_argument('--model', default='tiny', help="'tiny' (below) or a jax_ema.models name")
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('-b', '--batch-size', type=int, default=8)
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--decay', type=float, default=0.9998)
    p.add_argument('--log-interval', type=int, default=50)
    p.add_argument('--host-ema', action='store_true', help='the EMA in host memory (--model-ema-force-cpu)')
    p.add_argument('--out', default='soak.json')
    args = p.parse_args(argv)
    if not 0 < args.warmup < args.steps:
        p.error('--warmup must be between 0 and --steps')
    report = run(args)
    print(
        f'{report["model"]} {report["img_size"]}px b{report["batch_size"]}, {report["steps"]} steps, '
        f'{"host" if report["host_ema"] else "device"} EMA: RSS {report["rss_warmup_mb"]:.1f} MiB after '
        f'{report["warmup"]} steps -> {report["rss_end_mb"]:.1f} MiB at the end ({report["growth_pct"]:+.2f}%, '
        f'bar < {GROWTH_BAR_PCT}%: {"ok" if report["passed"] else "FAILED"}); live arrays '
        f'{report["live_arrays_warmup"]} -> {report["live_arrays_end"]}; {report["steps_per_s"]:.1f} steps/s'
    )
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
