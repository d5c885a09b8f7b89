"""Sweep sigma_rel post hoc on ONE digits run: train once with two power-function EMAs and snapshots, then
reconstruct and validate the EMA of each sigma_rel (python -m jax_ema.posthoc + validate, as a user would).

    python benchmarks/posthoc_sweep.py [--run RUN] [--out-dir docs/figures]

Without --run it trains `python -m jax_ema.train --model resnet18 --model-ema --model-ema-decay 0.99
--model-ema-std 0.05 0.1 --model-ema-snapshot-every 10 --epochs 5 --img-size 16` on the built-in digits
first (a few CPU minutes).
Writes posthoc_sweep.png (validation top-1 and loss vs sigma_rel) and posthoc_sweep.md (the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

from jax_ema import posthoc, reporting
from jax_ema.train import main as train_main
from jax_ema.validate import validate

TRAIN = [
    '--model',
    'resnet18',
    '--model-ema',
    '--model-ema-decay',
    '0.99',
    '--model-ema-std',
    '0.05',
    '0.1',
    '--model-ema-snapshot-every',
    '10',
    '--epochs',
    '5',
    '--img-size',
    '16',
    '--log-interval',
    '100',
]
STDS = (0.02, 0.03, 0.05, 0.07, 0.10, 0.13, 0.17, 0.21, 0.25)


def sweep(run_dir: Path, work: Path, stds=STDS) -> list[dict]:
    rows = []
    for std in stds:
        done = posthoc.posthoc(run_dir, std, work / f'std_{std:g}')
        got = validate(work / f'std_{std:g}', use_ema=True)
        rows.append(dict(std=std, gamma=done['gamma'], top1=got['top1'], loss=got['loss']))
        print(
            f'sigma_rel {std:5.3f}  gamma {done["gamma"]:7.3f}  top-1 {got["top1"]:7.3f}  loss {got["loss"]:.4f}',
            flush=True,
        )
    return rows


def write(rows: list[dict], run_dir: Path, out_dir: Path) -> None:
    from matplotlib.figure import Figure

    last = reporting.read_summary(run_dir)[-1]
    results = json.loads((run_dir / 'results.json').read_text())
    first = len(results['ema_decays'])  # the power members follow the decays in summary.csv
    tracked = {f'std {s:g} (tracked)': f'ema{first + j}' for j, s in enumerate(results['ema_stds'])}
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    stds = [r['std'] for r in rows]
    for ax, key, label in ((ax_acc, 'top1', 'validation top-1 (%)'), (ax_loss, 'loss', 'validation loss')):
        ax.plot(stds, [r[key] for r in rows], marker='o', label='post-hoc EMA')
        ax.axhline(float(last[f'raw_eval_{key}']), linestyle='--', color='grey', label='raw weights')
        for (name, prefix), s in zip(tracked.items(), results['ema_stds']):
            ax.plot([s], [float(last[f'{prefix}_eval_{key}'])], marker='x', markersize=10, linestyle='', label=name)
        ax.set(xlabel='σ_rel', ylabel=label, xscale='log')
        ax.set_xticks(stds, [f'{s:g}' for s in stds], fontsize='small')
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.suptitle(f'One digits run ({int(last["epoch"]) + 1} epochs): the EMA of each σ_rel reconstructed post hoc')
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / 'posthoc_sweep.png', dpi=100)
    table = ['| σ_rel | γ | top-1 (%) | loss |', '| --- | --- | --- | --- |']
    table += [f'| {r["std"]:g} | {r["gamma"]:.2f} | {r["top1"]:.2f} | {r["loss"]:.4f} |' for r in rows]
    table += [
        f'| {name}, validated in training | | {float(last[f"{prefix}_eval_top1"]):.2f} | '
        f'{float(last[f"{prefix}_eval_loss"]):.4f} |'
        for name, prefix in tracked.items()
    ]
    table += [f'| raw weights | | {float(last["raw_eval_top1"]):.2f} | {float(last["raw_eval_loss"]):.4f} |']
    (out_dir / 'posthoc_sweep.md').write_text('\n'.join(table) + '\n')
    print('\n'.join(table))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', default=None, help='a run trained with --model-ema-std 0.05 0.1 and snapshots')
    p.add_argument('--out-dir', default='docs/figures')
    p.add_argument('--work', default=None, help='keep the run and the reconstructions here (default: a temp folder)')
    args = p.parse_args(argv)
    with contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run) if args.run else Path(tmp) / 'run'
        if args.run is None:
            assert train_main([*TRAIN, '--output', tmp, '--experiment', 'run']) == 0
        write(sweep(run_dir, Path(tmp) / 'posthoc'), run_dir, Path(args.out_dir))


if __name__ == '__main__':
    main()
