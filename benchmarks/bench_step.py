"""Time the trainer's step without EMA, with the on-device EMA and with the host EMA (every 1, 4, 16 updates).

    python benchmarks/bench_step.py --model resnet50 -b 32 --img-size 64 [--out bench_step.json]

The variants alternate in rounds within one run (so drift in machine load hits all of them alike);
each round times `--steps` steps ending in one block_until_ready. Prints medians and ratios to no-EMA.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import ema, offload, optim
from jax_ema.models import create_model
from jax_ema.train import create_train_state, train_step


def make_variant(name, model, variables, batch, decay):
    """`name`: no_ema | device_ema | host_ema, optionally with `_k<K>` (update every K): the trainer's path."""
    tx = optim.create_optimizer('sgd', lambda s: 0.01, 1e-4, 0.9)
    on_host = name.startswith('host')
    every = int(name.split('_k')[1]) if '_k' in name else 1
    cfg = None if name == 'no_ema' else ema.EmaConfig(decay=decay, update_every=every)
    state = create_train_state(model, tx, variables, cfg)
    if on_host:
        state = state.replace(
            ema_params=offload.to_host(state.ema_params), ema_batch_stats=offload.to_host(state.ema_batch_stats)
        )
    stepper = offload.build_step(functools.partial(train_step, smoothing=0.1), cfg, 'host' if on_host else 'device')
    count = itertools.count(1)
    return (lambda st: stepper(st, batch, next(count))[0]), state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='resnet50')
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=10, help='steps per timed round')
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--decay', type=float, default=0.9998)
    p.add_argument('--variants', nargs='+', default=['no_ema', 'device_ema', 'host_ema', 'host_ema_k4', 'host_ema_k16'])
    p.add_argument('--out', default='bench_step.json')
    args = p.parse_args(argv)

    model = create_model(args.model, 1000)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, args.img_size, args.img_size, 3)), train=False)
    rng = np.random.default_rng(0)
    batch = {
        'image': jnp.asarray(rng.normal(size=(args.batch_size, args.img_size, args.img_size, 3)), jnp.float32),
        'label': jnp.asarray(rng.integers(0, 1000, size=args.batch_size), jnp.int32),
    }
    runs, states = {}, {}
    for name in args.variants:
        runs[name], states[name] = make_variant(name, model, variables, batch, args.decay)
        for _ in range(2):  # compile and warm up
            states[name] = runs[name](states[name])
        jax.block_until_ready(states[name])
    times = {name: [] for name in args.variants}
    for _ in range(args.rounds):
        for name in args.variants:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                states[name] = runs[name](states[name])
            jax.block_until_ready(states[name].params)
            times[name].append((time.perf_counter() - t0) / args.steps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get('no_ema')
    report = dict(
        model=args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        steps=args.steps,
        rounds=args.rounds,
        device=str(jax.devices()[0]),
        backend=jax.default_backend(),
        machine=platform.machine(),
        median_step_s=medians,
        ratio_to_no_ema={n: m / base for n, m in medians.items()} if base else None,
        samples=times,
    )
    for name in args.variants:
        ratio = f'  ratio {medians[name] / base:.3f}' if base else ''
        print(f'{name:>11}: median {medians[name] * 1e3:8.2f} ms/step{ratio}')
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
