"""What a validate sweep over every checkpoint of a run saves by building its dataset once: the same checkpoints
validated with one shared `datasets` dict (python -m jax_ema.validate's sweep) and with a dataset built per
checkpoint (what it did before), alternated in one process after a warm-up compile.

    python benchmarks/validate_sweep.py [--run RUN --data DATA] [--repeats 2]

Without --run it writes 2 x (40 train + 100 validation) PNGs and trains resnet18 at 32 px for 5 epochs with
--model-ema (one checkpoint an epoch) first, in a temporary folder (a CPU minute or two).
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

TRAIN = ['--model', 'resnet18', '--img-size', '32', '-b', '16', '--epochs', '5', '--model-ema', '--warmup-epochs', '0']


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
    p.add_argument('--repeats', type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run, data = args.run, args.data
        if run is None:
            data = str(write_images(Path(tmp) / 'ds'))
            assert train_main([data, *TRAIN, '--output', tmp, '--experiment', 'run']) == 0
            run = Path(tmp) / 'run'
        checkpoints = sorted(
            (p for p in (run / 'checkpoints').iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        validate(checkpoints[0], data, use_ema=True)  # the compile, outside the timings
        times = {'per_checkpoint': [], 'shared': []}
        for _ in range(args.repeats):
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
