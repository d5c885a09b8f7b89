"""What a validate sweep over every checkpoint of a run saves by building its dataset once: the same checkpoints
validated with one shared `datasets` dict (python -m jax_ema.validate's sweep) and with a dataset built per
checkpoint (what it did before), alternated in one process after a warm-up compile.

    python benchmarks/validate_sweep.py [--run RUN --data DATA] [--repeats 2] [--quick]

Without --run it writes 2 x (40 train + 100 validation) PNGs and trains resnet18 at 32 px for 5 epochs with
--model-ema (one checkpoint an epoch) first, in a temporary folder (a CPU minute or two). --quick (the tests'
smoke run): 2 x (8 + 12) PNGs, 2 epochs, one repeat.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from jax_ema.train import main as train_main
from jax_ema.validate import validate

QUICK = dict(images=(('train', 8), ('validation', 12)), epochs=2, batch_size=8, repeats=1)


def train_flags(quick: bool = False) -> list[str]:
    epochs, batch_size = (QUICK['epochs'], QUICK['batch_size']) if quick else (5, 16)
    return ['--model', 'resnet18', '--img-size', '32', '-b', str(batch_size), '--epochs', str(epochs), '--model-ema']


def write_images(root: Path, per_split=(('train', 40), ('validation', 100))) -> Path:
    rng = np.random.default_rng(0)
    for split, count in per_split:
        for c, name in enumerate(('cat', 'dog')):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 120, size=(40, 48, 3)) + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f'{i}.png')
    return root


def sweep_seconds(checkpoints, data, shared: bool) -> float:
    datasets = {} if shared else None
    start = time.perf_counter()
    for path in checkpoints:
        validate(path, data, use_ema=True, datasets=datasets)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--run', type=Path, default=None, help='a run folder (default: train a tiny one)')
    p.add_argument('--data', default=None, help="the run's DATA (with --run)")
    p.add_argument('--repeats', type=int, default=None, help='default: 2 (--quick: 1)')
    p.add_argument('--quick', action='store_true', help='a tiny run and one repeat (a smoke run)')
    args = p.parse_args(argv)
    repeats = args.repeats or (QUICK['repeats'] if args.quick else 2)
    with tempfile.TemporaryDirectory() as tmp:
        run, data = args.run, args.data
        if run is None:
            data = str(write_images(Path(tmp) / 'ds', *([QUICK['images']] if args.quick else [])))
            flags = [*train_flags(args.quick), '--warmup-epochs', '0', '--output', tmp, '--experiment', 'run']
            assert train_main([data, *flags]) == 0
            run = Path(tmp) / 'run'
        checkpoints = sorted(
            (p for p in (run / 'checkpoints').iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        validate(checkpoints[0], data, use_ema=True)  # the compile, outside the timings
        times = {'per_checkpoint': [], 'shared': []}
        for _ in range(repeats):
            for name in times:
                times[name].append(sweep_seconds(checkpoints, data, name == 'shared'))
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    print(
        f'{len(checkpoints)} checkpoints: a dataset per checkpoint {mean["per_checkpoint"]:.2f} s, one shared '
        f'{mean["shared"]:.2f} s (ratio {mean["per_checkpoint"] / mean["shared"]:.2f}; runs: {times})',
        flush=True,
    )
    return dict(checkpoints=len(checkpoints), **mean)


if __name__ == '__main__':
    main()
