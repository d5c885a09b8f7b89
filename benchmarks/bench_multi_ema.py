"""Time the stacked EMA update with 1, 3 and 8 members on a model's state, ratio to 1.

    python benchmarks/bench_multi_ema.py --model resnet50 [--members 1 3 8] [--train-step] [--out F.json]

`update`: the jitted, donated `ema.update` of the params and BatchNorm statistics (what the fused step
adds per update, and what the host/update-every-K path dispatches), decays 0.9998, 0.9999, ... stacked
as one [members, n] buffer. `--train-step`: the trainer's whole `train_step` with the stacked EMA fused
in (batch `-b`, `--img-size`), as benchmarks/bench_step.py measures it, plus the step without EMA.
Variants alternate in rounds (machine-load drift hits all alike); medians over rounds. The update's
memory traffic (XLA's cost analysis, "bytes accessed") is printed too: it does not depend on machine load.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import ema, optim
from jax_ema.models import create_model
from jax_ema.train import create_train_state, train_step


def config(members: int) -> ema.EmaConfig:
    decays = [1.0 - 2e-4 / (1 + i) for i in range(members)]  # 0.9998, 0.9999, 0.99993, ...
    return ema.EmaConfig(decay=decays[0], extra_decays=tuple(decays[1:]))


def update_variant(members, variables):
    """(run, state): one donated stacked EMA update per call, from fixed new weights."""
    cfg = config(members)
    params, stats = variables['params'], variables['batch_stats']
    update = jax.jit(lambda e, s, p, st, step: ema.update(cfg, e, s, p, st, step), donate_argnums=(0, 1))
    state = (ema.init(params, members), ema.init(stats, members))
    counter = iter(range(1, 10**9))
    cost = update.lower(*state, params, stats, 1).compile().cost_analysis()
    traffic = (cost[0] if isinstance(cost, list) else cost).get('bytes accessed')  # XLA's count, machine-free
    return (lambda st: update(*st, params, stats, next(counter))), state, traffic


def step_variant(members, model, variables, batch):
    """(run, state): the trainer's train_step with the stacked EMA fused in (members 0: no EMA)."""
    cfg = config(members) if members else None
    tx = optim.create_optimizer('sgd', lambda s: 0.01, 1e-4, 0.9)
    state = create_train_state(model, tx, variables, None)
    if cfg is not None:
        state = state.replace(
            ema_params=ema.init(state.params, members), ema_batch_stats=ema.init(state.batch_stats, members)
        )
    step = jax.jit(functools.partial(train_step, ema_cfg=cfg, smoothing=0.1), donate_argnums=0)
    return (lambda st: step(st, batch)[0]), state


def timed(runs, states, steps, rounds):
    for name in runs:  # compile and warm up
        for _ in range(2):
            states[name] = runs[name](states[name])
        jax.block_until_ready(states[name])
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name in runs:
            t0 = time.perf_counter()
            for _ in range(steps):
                states[name] = runs[name](states[name])
            jax.block_until_ready(states[name])
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='resnet50')
    p.add_argument('--members', type=int, nargs='+', default=[1, 3, 8])
    p.add_argument('--train-step', action='store_true', help='also time the whole train step')
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=10, help='calls per timed round')
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--out', default='bench_multi_ema.json')
    args = p.parse_args(argv)

    model = create_model(args.model, 1000)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, args.img_size, args.img_size, 3)), train=False)
    n = sum(int(np.size(x)) for x in jax.tree.leaves(variables))
    report = dict(
        model=args.model,
        floats_per_member=n,
        device=str(jax.devices()[0]),
        backend=jax.default_backend(),
        machine=platform.machine(),
        steps=args.steps,
        rounds=args.rounds,
    )
    runs, states, traffic = {}, {}, {}
    for m in args.members:
        runs[f'update_x{m}'], states[f'update_x{m}'], traffic[f'update_x{m}'] = update_variant(m, variables)
    if args.train_step:
        rng = np.random.default_rng(0)
        batch = {
            'image': jnp.asarray(rng.normal(size=(args.batch_size, args.img_size, args.img_size, 3)), jnp.float32),
            'label': jnp.asarray(rng.integers(0, 1000, size=args.batch_size), jnp.int32),
        }
        report.update(batch_size=args.batch_size, img_size=args.img_size)
        for m in [0, *args.members]:
            runs[f'step_x{m}'], states[f'step_x{m}'] = step_variant(m, model, variables, batch)
    times = timed(runs, states, args.steps, args.rounds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = {'update': medians[f'update_x{args.members[0]}']}
    if args.train_step:
        base['step'] = medians['step_x0']
    ratios = {name: m / base[name.split('_')[0]] for name, m in medians.items()}
    one = args.members[0]  # the figure: the step with m decays over the step with 1
    ratio_to_1 = {
        name: m / medians[f'{name.split("_")[0]}_x{one}'] for name, m in medians.items() if not name.endswith('_x0')
    }
    for name, m in medians.items():
        moved = f'  {traffic[name] / 1e6:8.1f} MB accessed' if traffic.get(name) else ''
        to_1 = f'  ratio to x{one} {ratio_to_1[name]:.3f}' if name in ratio_to_1 else ''
        print(f'{name:>10}: median {m * 1e3:9.3f} ms  ratio {ratios[name]:.3f}{to_1}{moved}')
    report.update(
        median_s=medians,
        ratio=ratios,
        ratio_to_1=ratio_to_1,
        samples=times,
        bytes_accessed=traffic,
        ratio_base=f'update_x{args.members[0]}' + (', step_x0 (no EMA)' if args.train_step else ''),
    )
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
