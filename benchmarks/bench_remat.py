"""--grad-checkpointing side by side: the trainer's compiled step (EMA on the device) without and with it.

    python benchmarks/bench_remat.py --model resnet50 -b 32 --img-size 64 [--out bench_remat.json]

For each variant: XLA's compiled memory analysis (temp bytes: the activations kept for the backward and the
other scratch buffers; a deterministic figure of the compiled program) and the convolutions in the compiled
HLO, then the step time (median of --rounds rounds of --steps steps; the variants alternate within each round,
so drift in machine load hits both). On the CPU a third row, memory only: the remat model compiled with
XLA:CPU's default passes, which drop jax.checkpoint's optimization barriers and merge the recomputation away
(models.step_compiler_options keeps them for the trainer).
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

from jax_ema import ema, offload, optim
from jax_ema.models import create_model, step_compiler_options
from jax_ema.step import create_train_state, train_step


def compile_step(model_name: str, remat: bool, batch: dict, img_size: int, compiler_options):
    """(compiled trainer step, its initial state) for the model with or without grad_checkpointing."""
    model = create_model(model_name, 1000, grad_checkpointing=remat)
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init(jax.random.PRNGKey(0), jnp.zeros((1, img_size, img_size, 3)))
    cfg = ema.EmaConfig(decay=0.9998)
    state = create_train_state(model, optim.create_optimizer('sgd', lambda s: 0.01, 1e-4, 0.9), variables, cfg)
    built = offload.build_step(
        functools.partial(train_step, smoothing=0.1), cfg, 'device', compiler_options=compiler_options
    )
    return built.train_step_fn.lower(state, batch).compile(), state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='resnet50')
    p.add_argument('-b', '--batch-size', type=int, default=32)
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--steps', type=int, default=3, help='steps per timed round')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', default='bench_remat.json')
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    size = (args.batch_size, args.img_size, args.img_size, 3)
    batch = {
        'image': jnp.asarray(rng.integers(0, 256, size=size), jnp.uint8),
        'label': jnp.asarray(rng.integers(0, 1000, size=args.batch_size), jnp.int32),
    }
    variants = {
        'plain': (False, None),
        'remat': (True, step_compiler_options(dict(grad_checkpointing=True))),
    }
    if jax.default_backend() == 'cpu':
        variants['remat_xla_cpu_default'] = (True, None)
    rows, steps, states = {}, {}, {}
    for name, (remat, options) in variants.items():
        t0 = time.perf_counter()
        compiled, state = compile_step(args.model, remat, batch, args.img_size, options)
        memory = compiled.memory_analysis()
        rows[name] = dict(
            temp_bytes=int(memory.temp_size_in_bytes),
            argument_bytes=int(memory.argument_size_in_bytes),
            convolutions=compiled.as_text().count('convolution('),
            compile_s=round(time.perf_counter() - t0, 1),
        )
        if name != 'remat_xla_cpu_default':
            steps[name], states[name] = compiled, compiled(state, batch)[0]  # one warm-up step
    jax.block_until_ready(states)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, compiled in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                states[name] = compiled(states[name], batch)[0]
            jax.block_until_ready(states[name].params)
            times[name].append((time.perf_counter() - t0) / args.steps)
    for name, t in times.items():
        rows[name]['step_s'] = round(statistics.median(t), 4)
    plain = rows['plain']
    for row in rows.values():
        row['temp_vs_plain'] = round(row['temp_bytes'] / plain['temp_bytes'], 3)
        if 'step_s' in row:
            row['step_time_vs_plain'] = round(row['step_s'] / plain['step_s'], 3)
    report = dict(
        model=args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        backend=jax.default_backend(),
        devices=str(jax.devices()[0].device_kind),
        cpus=platform.processor() or platform.machine(),
        jax=jax.__version__,
        variants=rows,
    )
    for name, row in rows.items():
        step = f'{row["step_s"]:.3f} s/step ({row["step_time_vs_plain"]}x)' if 'step_s' in row else 'not timed'
        print(
            f'{name:24s} temp {row["temp_bytes"] / 2**20:8.1f} MiB ({row["temp_vs_plain"]}x)  '
            f'convolutions {row["convolutions"]:4d}  {step}'
        )
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
