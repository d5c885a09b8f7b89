"""One command for a GPU machine: parity at pinned precision, the train step per EMA placement, timm's
step, and the trainer's own epoch loop. Needs jax, torch and timm; no TensorFlow, no tensorboardX.

    python benchmarks/gpu_check.py                # every part (docs/gpu.md: what each measures)
    python benchmarks/gpu_check.py --only step    # rerun one part: parity | step | loop | timm (a full run's order)
    python benchmarks/gpu_check.py --quick        # tiny model and images, few steps: seconds on a CPU

parity  the parity tests' own measurements with the precision pinned (torch_ref/precision.py): eval logits
        per model family, the EMA against ModelEmaV3, one training trajectory per optimizer
step    our jitted train step (default ResNet-50, batch 128, 224 px) with no EMA and the EMA on the device,
        on the host (updated every update, averaged on the host while the next step runs) and sharded, in
        float32 and bfloat16 (--amp), alternating rounds; images/s, ratios to no EMA and to the device
        EMA, host CPU-seconds per update, device and host bytes and peak device bytes per placement; the
        host EMA's average alone, wall and CPU seconds per update
timm    timm's step: eager channels_last (float32, bfloat16 autocast) without EMA, with ModelEmaV3 on the
        device and on the CPU, and torch.compile (bfloat16, EMA on the device), alternating rounds
loop    jax_ema.loop.train_epoch (logging, NaN guard, EMA placement) for a few hundred updates on batches
        made in memory; images/s between log intervals as a ratio to the bare step's; evaluation (raw
        and EMA weights) and a checkpoint save timed apart

Only the parity part pins the precision; the others time each trainer as it runs: JAX at its default
precision, timm with train.py's TF32 and cuDNN autotuner. Prints one table; writes
benchmarks/results/gpu_check_<backend>.json (--only merges into it) with the machine, versions and commit
(also per part). Exits 1 if a parity bound fails.
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # jax and torch share the GPU

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / 'benchmarks')]
import gpu_check_timm  # noqa: E402
import gpu_check_trainer as trainer_api  # noqa: E402
from bench_ema import add_run_flags, interleave, log, with_defaults, with_torch_threads  # noqa: E402
from gpu_check_report import table  # noqa: E402

from torch_ref import precision  # noqa: E402

RESULTS = ROOT / 'benchmarks' / 'results'
PARTS = ('parity', 'step', 'loop', 'timm')  # in this order: torch.compile's long first compile comes last
NUM_CLASSES = 1000
FULL = dict(
    model='resnet50',
    batch_size=128,
    img_size=224,
    steps=10,
    rounds=5,
    loop_updates=200,
    log_interval=50,
    eval_batches=10,
    ema_steps=1000,
    compile_backend='inductor',
    parity_models=('resnet50', 'efficientnet_b0', 'mobilenetv3_large_100'),
    trajectories=('sgd_f32', 'adamw_f32', 'rmsproptf_f64'),
)
QUICK = dict(
    model='resnet-tiny',
    batch_size=4,
    img_size=32,
    steps=2,
    rounds=2,
    loop_updates=6,
    log_interval=2,
    eval_batches=2,
    ema_steps=20,
    compile_backend=None,
    parity_models=('resnet18',),
    trajectories=(),
    torch_threads=1,
)


# --------------------------------------------------------------------------- parity


def part_parity(args) -> dict:
    """The parity tests' measurements (their own functions), with the precision pinned as in the tests."""
    if str(ROOT / 'parity_tests') not in sys.path:  # the test modules import each other as pytest runs them
        sys.path.append(str(ROOT / 'parity_tests'))
    import report  # noqa: E402  parity_tests/report.py: its rows are the tests' comparisons
    import test_efficientnet_parity  # noqa: E402
    import test_trajectory  # noqa: E402

    restore = precision.pin()
    try:
        pinned = precision.state()
        rows = []
        for name in args.parity_models:
            log(f'parity: {name} eval logits')
            rows.append(
                (
                    f'{name} eval logits, float32, 32 px, random BN (x max|logit|)',
                    1e-5,
                    test_efficientnet_parity.eval_error(name),
                    '',
                )
            )
        log('parity: EMA vs ModelEmaV3')
        rows += report.ema_rows(args.ema_steps)
        for name in args.trajectories:
            log(f'parity: trajectory {name}')
            rows += [
                (f'trajectory {name}: {q}', bound, err, where)
                for q, (err, where, bound) in test_trajectory.measure(name).items()
            ]
    finally:
        restore()
    rows = [dict(what=w, bound=b, error=float(e), where=where, ok=bool(e <= b)) for w, b, e, where in rows]
    return dict(
        precision=pinned,
        float64_missing=precision.float64_missing(),
        rows=rows,
        failed=sum(not r['ok'] for r in rows),
        torch_device=str(precision.torch_device()),
    )


# --------------------------------------------------------------------------- our train step


def batch_arrays(batch_size: int, img_size: int, seed: int = 0) -> dict:
    """One batch as the input pipeline hands it over: normalised float32 NHWC images, int32 labels."""
    rng = np.random.default_rng(seed)
    return {
        'image': rng.normal(size=(batch_size, img_size, img_size, 3)).astype(np.float32),
        'label': rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32),
    }


def step_runner(state, step, batch, steps: int):
    """(timing closure, box holding the state): `steps` updates ending in one block_until_ready (and, for
    the host EMA, the wait for its last average); the process CPU-seconds per update go to box['cpu_s']."""
    box = {'state': state, 'step': step, 'count': 0, 'cpu_s': []}

    def run(n):
        for _ in range(n):
            box['count'] += 1
            box['state'], _ = step(box['state'], batch, box['count'])
        jax.block_until_ready(box['state'])
        getattr(step, 'wait', lambda: None)()  # the host EMA: its average of the last update

    def timed():
        t0, cpu0 = time.perf_counter(), time.process_time()
        run(steps)
        box['cpu_s'].append((time.process_time() - cpu0) / steps)
        return (time.perf_counter() - t0) / steps

    run(2)  # compile and warm up
    return timed, box


def part_step(args) -> dict:
    batch = trainer_api.shard(batch_arrays(args.batch_size, args.img_size))
    fns, memory, boxes = {}, {}, {}
    for dtype in ('float32', 'bfloat16'):
        model = trainer_api.flax_model(args.model, NUM_CLASSES, dtype)
        variables = trainer_api.init(model, args.img_size)
        for placement in trainer_api.PLACEMENTS:
            name = f'{dtype}_ema_{placement}'
            log(f'step: compiling {name}')
            built = trainer_api.build(model, variables, placement, args.decay)
            fns[name], boxes[name] = step_runner(*built, batch, args.steps)
            memory[name] = trainer_api.memory(boxes[name]['step'], boxes[name]['state'], batch)
    log(f'step: timing {len(fns)} variants, {args.rounds} rounds of {args.steps} steps')
    times = interleave(fns, args.rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    host_state = boxes['float32_ema_host']['state']
    host_average = trainer_api.time_host_average(host_state, args.rounds * args.steps)
    return dict(
        model=args.model,
        batch_size=args.batch_size,
        img_size=args.img_size,
        decay=args.decay,
        median_s=med,
        images_per_s={n: args.batch_size / m for n, m in med.items()},
        ratio_to_no_ema={n: m / med[f'{n.split("_")[0]}_ema_none'] for n, m in med.items()},
        ratio_to_device_ema={n: m / med[f'{n.split("_")[0]}_ema_device'] for n, m in med.items()},
        cpu_s_per_update={n: statistics.median(box['cpu_s']) for n, box in boxes.items()},
        host_average=host_average,
        memory=memory,
        samples=times,
    )


# --------------------------------------------------------------------------- timm's step


def part_timm(args) -> dict:
    with gpu_check_timm.train_py_flags():
        return _timm(args)


def _timm(args) -> dict:
    device = precision.torch_device()
    arrays = batch_arrays(args.batch_size, args.img_size)
    variants = gpu_check_timm.variants(args.compile_backend)
    fns, peaks = {}, {}
    for name, variant in variants.items():
        log(f'timm: building {name}')
        step = gpu_check_timm.build(
            args.model, NUM_CLASSES, arrays['image'], arrays['label'], args.decay, variant, args.compile_backend, device
        )
        gpu_check_timm.peak_bytes(device)  # reset
        fns[name] = gpu_check_timm.runner(step, args.steps, 2, device)
        peaks[name] = gpu_check_timm.peak_bytes(device)
    log(f'timm: timing {len(fns)} variants, {args.rounds} rounds of {args.steps} steps')
    times = interleave(fns, args.rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    base = {dtype: med.get(f'timm_eager_{dtype}_ema_none') for dtype in ('float32', 'bfloat16')}
    del fns
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return dict(
        model=args.model,
        device=str(device),
        compile_backend=args.compile_backend,
        median_s=med,
        images_per_s={n: args.batch_size / m for n, m in med.items()},
        ratio_to_no_ema={n: m / base[variants[n][1]] for n, m in med.items()},
        peak_device_bytes=peaks,
        samples=times,
    )


# --------------------------------------------------------------------------- the trainer's epoch loop


def interval_rates(stamps: list, log_interval: int, batch_size: int) -> list:
    """images/s of each log interval but the first (warm-up), from the batch hand-out stamps."""
    return [log_interval * batch_size / (b - a) for a, b in zip(stamps[1:], stamps[2:])]


def stamped(batches: list, updates: int, log_interval: int, stamps: list, feed):
    """`updates` batches cycling through `batches`, each through `feed` (the trainer's shard_batch) as the
    loop asks for it; stamps the time at every log interval's first hand-out and after the last update."""
    for i in range(updates):
        if i % log_interval == 0:
            stamps.append(time.perf_counter())
        yield feed(batches[i % len(batches)])
    stamps.append(time.perf_counter())  # reached once the loop's last sync is done


def part_loop(args) -> dict:
    model = trainer_api.flax_model(args.model, NUM_CLASSES, 'float32')
    variables = trainer_api.init(model, args.img_size)
    host_batches = [batch_arrays(args.batch_size, args.img_size, seed) for seed in range(4)]
    device_batch = trainer_api.shard(host_batches[0])
    dataset = trainer_api.InMemory(host_batches, args.eval_batches)
    out = {}
    runs = [(p, 'host') for p in trainer_api.PLACEMENTS] + [('device', 'device')]
    for placement, feed in runs:
        name = f'float32_ema_{placement}' + ('_batches_on_device' if feed == 'device' else '')
        log(f'loop: {name}')
        bare, box = step_runner(*trainer_api.build(model, variables, placement, args.decay), device_batch, args.steps)
        bare_rate = args.batch_size / statistics.median(bare() for _ in range(args.rounds))
        source, to_device = (host_batches, trainer_api.shard) if feed == 'host' else ([device_batch], lambda b: b)
        stamps = []
        batches = stamped(source, args.loop_updates, args.log_interval, stamps, to_device)
        state = trainer_api.run_epoch(
            box['step'], box.pop('state'), batches, args.loop_updates, args.log_interval, start=box['count']
        )
        rates = interval_rates(stamps, args.log_interval, args.batch_size)
        out[name] = dict(
            bare_step_images_per_s=bare_rate,
            loop_images_per_s=rates,
            loop_vs_bare=statistics.median(rates) / bare_rate,
            batch_bytes=sum(v.nbytes for v in source[0].values()) if feed == 'host' else 0,
        )
        if feed == 'host':
            out[name].update(trainer_api.time_eval_and_save(model, state, placement, dataset, args))
    return dict(model=args.model, updates=args.loop_updates, log_interval=args.log_interval, runs=out)


# --------------------------------------------------------------------------- report


def machine() -> dict:
    def git(*cmd):
        try:
            return subprocess.run(
                ['git', '-C', str(ROOT), *cmd], capture_output=True, text=True, timeout=20, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return 'unknown'

    dev = jax.devices()[0]
    return dict(
        backend=jax.default_backend(),
        jax_device=str(dev),
        jax_device_kind=dev.device_kind,
        jax_device_count=jax.device_count(),
        torch_device=str(precision.torch_device()),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        # a checkout copied without .git (a lent GPU machine): the commit its caller passes in GPU_COMMIT
        commit=git('rev-parse', 'HEAD') if (ROOT / '.git').exists() else os.environ.get('GPU_COMMIT', 'unknown'),
        dirty=bool(git('status', '--porcelain', '--untracked-files=no')) if (ROOT / '.git').exists() else None,
        versions=dict(
            jax=jax.__version__,
            jaxlib=version('jaxlib'),
            flax=version('flax'),
            optax=version('optax'),
            orbax=version('orbax-checkpoint'),
            torch=torch.__version__,
            cuda=torch.version.cuda,
            timm=timm.__version__,
            numpy=np.__version__,
        ),
        modules_loaded={m: sys.modules.get(m) is not None for m in ('tensorflow', 'tensorboardX')},
    )


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--only', choices=PARTS, help='run one part and merge it into the JSON')
    p.add_argument('--model', help=f'default {FULL["model"]}')
    add_run_flags(p, QUICK)
    p.add_argument('--loop-updates', type=int, help='updates of each epoch-loop run')
    p.add_argument('--log-interval', type=int)
    p.add_argument('--eval-batches', type=int)
    p.add_argument('--out', help='JSON path (default benchmarks/results/gpu_check_<backend>[_quick].json)')
    args = p.parse_args(argv)
    return with_defaults(args, QUICK if args.quick else FULL)


def main(argv=None) -> int:
    return with_torch_threads(parse(argv), run)


def run(args) -> int:
    if not args.quick and jax.config.jax_compilation_cache_dir is None:  # reruns (--only) skip the compiles
        jax.config.update('jax_compilation_cache_dir', os.path.expanduser('~/.cache/jax_ema_gpu_check'))
    backend = jax.default_backend()
    out = Path(args.out or RESULTS / f'gpu_check_{backend}{"_quick" if args.quick else ""}.json')
    report = json.loads(out.read_text()) if args.only and out.exists() else {'parts': {}}
    report.update(machine=machine(), quick=args.quick, args={k: v for k, v in vars(args).items() if k != 'out'})
    commit = report['machine']['commit']
    out.parent.mkdir(parents=True, exist_ok=True)
    for part in (args.only,) if args.only else PARTS:
        t0, cpu0 = time.time(), time.process_time()
        report['parts'][part] = globals()[f'part_{part}'](args)
        report['parts'][part].update(seconds=time.time() - t0, cpu_seconds=time.process_time() - cpu0, commit=commit)
        log(f'{part}: {time.time() - t0:.0f} s ({time.process_time() - cpu0:.0f} CPU-s)')
        report['seconds'] = sum(p['seconds'] for p in report['parts'].values())
        tmp = out.with_name(out.name + '.tmp')  # after every part: a run cut short keeps the parts it finished
        tmp.write_text(json.dumps(report, indent=2, default=str) + '\n')
        tmp.replace(out)
    print(table(report))
    print(f'wrote {out} ({report["seconds"]:.0f} s)')
    return 1 if report['parts'].get('parity', {}).get('failed') else 0


if __name__ == '__main__':
    sys.exit(main())
