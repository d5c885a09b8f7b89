"""Fine-tuning from pretrained weights vs training from scratch, offline, with weights made here.

    python benchmarks/finetune_demo.py [--work DIR] [--epochs 10]

1. Two image folders from scikit-learn's 8x8 digits (written as PNGs): PRE = the digits 4-9 (6 classes,
   all their images, split 80/20) and FT = the digits 0-3 (4 classes: 8 training images per class,
   100 validation images per class). No image or class of FT is in PRE.
2. Pretrain resnet18 on PRE with our trainer and export its EMA weights (`python -m jax_ema.export`).
3. Put that file into a Hugging Face cache as `timm/resnet18.a1_in1k` (resnet18's default tag), the layout
   `hf_hub_download` reads offline (tests/hub_cache.py).
4. Train on FT twice with the same flags: with `--pretrained` (HF_HUB_OFFLINE=1, HF_HUB_CACHE=the cache;
   the 6-class classifier does not fit the 4 classes, so it starts afresh) and from scratch.
Prints the markdown table of raw and EMA top-1 per epoch (docs/finetune.md). A few CPU minutes.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tests'))
from hub_cache import write_hub_cache  # noqa: E402  pylint: disable=wrong-import-position

COMMON = [
    '--model',
    'resnet18',
    '--img-size',
    '16',
    '-j',
    '2',
    '--log-interval',
    '1000',
    '--model-ema',
    '--warmup-epochs',
    '1',
]
PRETRAIN = ['--epochs', '8', '-b', '64', '--lr', '0.1', '--model-ema-decay', '0.99', '--model-ema-warmup']
FINETUNE = ['-b', '8', '--lr', '0.02', '--model-ema-decay', '0.9']


def write_folders(work: Path, train_per_class: int = 8, val_per_class: int = 100) -> tuple[Path, Path]:
    """PRE (digits 4-9, class folders) and FT (digits 0-3, train/ and validation/), as 8x8 grey PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    pre, ft = work / 'pre', work / 'ft'
    for label in range(10):
        images = digits.images[digits.target == label][rng.permutation(np.sum(digits.target == label))]
        if label >= 4:
            places = [(pre / str(label), images)]
        else:
            places = [
                (ft / 'train' / str(label), images[:train_per_class]),
                (ft / 'validation' / str(label), images[train_per_class : train_per_class + val_per_class]),
            ]
        for folder, subset in places:
            folder.mkdir(parents=True)
            for i, image in enumerate(subset):
                Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(folder / f'{i}.png')
    return pre, ft


def run(argv: list[str], **env) -> None:
    command = [sys.executable, '-m', *argv]
    print('$', ' '.join(f'{k}={v}' for k, v in env.items()), 'python -m', ' '.join(argv[0:]), flush=True)
    subprocess.run(command, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT), **env), stdout=subprocess.DEVNULL)


def summary(run_dir: Path) -> list[dict]:
    with open(run_dir / 'summary.csv') as f:
        return list(csv.DictReader(f))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work', default=None, help='folder for the data, runs and cache (default: a temporary one)')
    parser.add_argument('--epochs', type=int, default=10, help='fine-tuning epochs')
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix='finetune_demo_'))
    pre, ft = write_folders(work)
    out = work / 'runs'
    run(['jax_ema.train', str(pre), *COMMON, *PRETRAIN, '--output', str(out), '--experiment', 'pretrain'])
    weights = work / 'resnet18_digits4to9.safetensors'
    run(['jax_ema.export', '--checkpoint', str(out / 'pretrain'), '--use-ema', '--out', str(weights)])
    write_hub_cache(work / 'hub', 'timm/resnet18.a1_in1k', _read(weights))
    finetune = [str(ft), *COMMON, *FINETUNE, '--epochs', str(args.epochs), '--output', str(out)]
    run(
        ['jax_ema.train', *finetune, '--pretrained', '--experiment', 'pretrained'],
        HF_HUB_OFFLINE='1',
        HF_HUB_CACHE=str(work / 'hub'),
    )
    run(['jax_ema.train', *finetune, '--experiment', 'scratch'])
    pretrain_last = summary(out / 'pretrain')[-1]
    rows = [
        '| epoch | from scratch: raw | from scratch: EMA | pretrained: raw | pretrained: EMA |',
        '| ---: | ---: | ---: | ---: | ---: |',
    ]
    for s, p in zip(summary(out / 'scratch'), summary(out / 'pretrained')):
        rows.append(
            f'| {int(s["epoch"]) + 1} | {float(s["raw_eval_top1"]):.1f} | {float(s["ema_eval_top1"]):.1f} | '
            f'{float(p["raw_eval_top1"]):.1f} | {float(p["ema_eval_top1"]):.1f} |'
        )
    table = '\n'.join(rows)
    print(
        f'\nPretraining on digits 4-9, last epoch: raw top-1 {float(pretrain_last["raw_eval_top1"]):.1f}, '
        f'EMA top-1 {float(pretrain_last["ema_eval_top1"]):.1f}\nFine-tuning on digits 0-3 (validation top-1, %):\n'
        f'\n{table}\n\nwork folder: {work}'
    )
    return table


def _read(path: Path) -> dict:
    import safetensors.numpy

    return safetensors.numpy.load_file(path)


if __name__ == '__main__':
    main()
