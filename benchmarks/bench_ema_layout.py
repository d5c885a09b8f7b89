"""Where the on-device EMA's cost goes for small steps: per-leaf dispatch/kernels vs bytes.

    python benchmarks/bench_ema_layout.py --model resnet50 -b 32 --img-size 64

Variants, alternating in rounds in one run: the step without EMA; with the EMA as the trainer keeps
it (`ema.FlatTree`: one float32 vector, one fused update); and with the EMA as an ordinary pytree (one
buffer and one update per leaf). Also reports the host-side dispatch time per step (call returns, no sync).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import ema, optim
from jax_ema.models import create_model
from jax_ema.train import create_train_state, train_step


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--model', default='resnet50')
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--out', default='bench_ema_layout.json')
    args = p.parse_args(argv)
    model = create_model(args.model, 1000)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, args.img_size, args.img_size, 3)), train=False)
    rng = np.random.default_rng(0)
    batch = {
        'image': jnp.asarray(rng.normal(size=(args.batch_size, args.img_size, args.img_size, 3)), jnp.float32),
        'label': jnp.asarray(rng.integers(0, 1000, size=args.batch_size), jnp.int32),
    }
    tx = optim.create_optimizer('sgd', lambda s: 0.01, 1e-4, 0.9)
    cfg = ema.EmaConfig(decay=0.9998)

    plain = jax.jit(lambda s, b: train_step(s, b, None, 0.1)[0], donate_argnums=0)
    with_ema = jax.jit(lambda s, b: train_step(s, b, cfg, 0.1)[0], donate_argnums=0)
    flat_state = create_train_state(model, tx, variables, cfg)
    leaf_state = create_train_state(model, tx, variables, cfg)
    leaf_state = leaf_state.replace(
        ema_params=jax.tree.map(jnp.copy, ema.tree(leaf_state.ema_params)),
        ema_batch_stats=jax.tree.map(jnp.copy, ema.tree(leaf_state.ema_batch_stats)),
    )
    states = {'no_ema': create_train_state(model, tx, variables, None), 'flat_ema': flat_state, 'leaf_ema': leaf_state}
    fns = {'no_ema': plain, 'flat_ema': with_ema, 'leaf_ema': with_ema}
    for name in fns:
        for _ in range(3):
            states[name] = fns[name](states[name], batch)
        jax.block_until_ready(states[name])
    times = {n: [] for n in fns}
    dispatch = {n: [] for n in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                states[name] = fn(states[name], batch)
            t1 = time.perf_counter()
            jax.block_until_ready(states[name])
            t2 = time.perf_counter()
            dispatch[name].append((t1 - t0) / args.steps)
            times[name].append((t2 - t0) / args.steps)
    med = {n: statistics.median(t) for n, t in times.items()}
    dmed = {n: statistics.median(t) for n, t in dispatch.items()}
    leaves = {n: len(jax.tree.leaves(states[n])) for n in fns}
    for n in fns:
        print(
            f'{n:>9}: {med[n] * 1e3:8.2f} ms/step  ratio {med[n] / med["no_ema"]:.3f}  '
            f'dispatch {dmed[n] * 1e3:6.2f} ms/step  state leaves {leaves[n]}'
        )
    with open(args.out, 'w') as f:
        json.dump(
            dict(vars(args), device=str(jax.devices()[0]), median_step_s=med, dispatch_s=dmed, leaves=leaves),
            f,
            indent=2,
        )


if __name__ == '__main__':
    main()
