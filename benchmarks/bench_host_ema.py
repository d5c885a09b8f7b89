"""The host EMA's average alone (`--model-ema-force-cpu`, jax_ema/host_ema.py), on this machine's CPU.

    python benchmarks/bench_host_ema.py [--model resnet50] [--rounds 5]

Times `host_ema.Averager.update` (`ema.update` jitted for the CPU backend, the EMA donated) on the model's
EMA (params + BatchNorm statistics, float32), the new weights already in host memory as numpy: what the host
spends per EMA update besides the device->host copy. Beside it, on the same buffers, numpy's plain float32
lerp `old += w * (new - old)` over cache-sized blocks in 1 and 2 threads (not timm's rounding: no fused
multiply-add). Variants alternate in rounds; medians of wall and process CPU seconds. On a GPU machine
gpu_check.py measures the same average and the whole step. Writes benchmarks/results/bench_host_ema_cpu.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 1 << 16  # elements per numpy call: the temporaries stay in cache
sys.path.insert(0, str(ROOT))
from jax_ema import ema, host_ema  # noqa: E402
from jax_ema.models import create_model  # noqa: E402


def ema_of(model_name: str, img_size: int = 32):
    model = create_model(model_name, 1000)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, img_size, img_size, 3))))()
    return ema.init(variables['params']), ema.init(variables['batch_stats'])


def clocked(fn) -> tuple:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def numpy_lerp(old: np.ndarray, new: np.ndarray, weight, threads: int, pool):
    """old += weight * (new - old) in float32, 64k-element blocks striped over `threads` threads."""
    blocks = [(s, min(s + BLOCK, old.size)) for s in range(0, old.size, BLOCK)]

    def stripe(k):
        scratch = np.empty(BLOCK, old.dtype)
        for lo, hi in blocks[k::threads]:
            d = scratch[: hi - lo]
            np.subtract(new[lo:hi], old[lo:hi], out=d)
            np.multiply(d, weight, out=d)
            np.add(old[lo:hi], d, out=old[lo:hi])

    list(pool.map(stripe, range(threads)))


def run(args) -> dict:
    params, stats = jax.device_get(ema_of(args.model))
    rng = np.random.default_rng(0)
    new = [(f + rng.normal(0, 1e-3, f.shape)).astype(np.float32) for f in (params.flat, stats.flat)]
    averager = host_ema.Averager(ema.EmaConfig(), params, stats)
    plain, pool = params.flat.copy(), concurrent.futures.ThreadPoolExecutor(2)
    weight = np.float32(1 - ema.DEFAULT_DECAY)
    fns = {'host_ema_averager': lambda: averager.update(new, [[], []], 100, 1)}
    for threads in (1, 2):
        fns[f'numpy_float32_{threads}_thread'] = functools.partial(numpy_lerp, plain, new[0], weight, threads, pool)
    for fn in fns.values():
        fn()  # warm up: compile, touch the buffers
    samples = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            samples[name].append(clocked(fn))
    pool.shutdown()
    return dict(
        model=args.model,
        floats=int(params.flat.size + stats.flat.size),
        wall_s={n: statistics.median(w for w, _ in s) for n, s in samples.items()},
        cpu_s={n: statistics.median(c for _, c in s) for n, s in samples.items()},
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        jax=jax.__version__,
        numpy=np.__version__,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument('--model', default='resnet50')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results' / 'bench_host_ema_cpu.json'))
    args = p.parse_args(argv)
    report = run(args)
    Path(args.out).write_text(json.dumps(report, indent=2) + '\n')
    for name in report['wall_s']:
        print(f'{name:24s} wall {report["wall_s"][name] * 1e3:7.1f} ms   CPU {report["cpu_s"][name] * 1e3:7.1f} ms')
    print(f'{report["floats"]:,} floats, {report["cpu_count"]} cores, load {report["load_average"]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
