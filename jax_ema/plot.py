"""Overlay several runs' validation curves: `python -m jax_ema.plot RUN [RUN ...] --out FILE.png`.

Each run folder (made by `python -m jax_ema.train`) gives its summary.csv: raw weights dashed, EMA weights
solid, one colour per run, labelled by the run's EMA settings (from args.yaml, else results.json), e.g.
"decay 0.999 warmup". A run of several EMAs (`--model-ema-decay D0 D1 ...`, `--model-ema-std ...`) also
draws its further members dotted, labelled by their decay or std. `plot_runs(run_dirs, out, metric)` is
the library form, `run_label(run_dir)` the label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from jax_ema import reporting
from jax_ema.cli import ArgumentParser, run_cli
from jax_ema.errors import UserError

METRICS = {'top1': 'validation top-1 (%)', 'top5': 'validation top-5 (%)', 'loss': 'validation loss'}


def _ema_settings(run_dir: Path) -> dict | None:
    """{'decay', 'use_warmup', 'update_every', 'force_cpu'} of a run, None when it ran without EMA."""
    args_path, results_path = run_dir / 'args.yaml', run_dir / 'results.json'
    try:
        if args_path.exists():
            args = yaml.safe_load(args_path.read_text()) or {}
            if not args.get('model_ema'):
                return None
            return {
                'decay': args.get('model_ema_decay'),
                'use_warmup': args.get('model_ema_warmup', False),
                'update_every': args.get('model_ema_update_every', 1),
                'force_cpu': args.get('model_ema_force_cpu', False),
                'extra_decays': args.get('model_ema_extra_decays') or [],
                'stds': args.get('model_ema_stds') or [],
            }
        if results_path.exists():
            return json.loads(results_path.read_text()).get('ema')
    except (yaml.YAMLError, json.JSONDecodeError, AttributeError) as e:
        raise UserError(
            f'cannot read the settings of run {str(run_dir)!r} ({type(e).__name__}); '
            'pass a run folder written by python -m jax_ema.train'
        ) from None
    raise UserError(
        f'run {str(run_dir)!r} has neither args.yaml nor results.json; '
        'pass a run folder written by python -m jax_ema.train'
    )


def run_label(run_dir) -> str:
    """The run's EMA settings in words: 'decay 0.999 warmup', 'decay 0.99 every 4 host', 'EMA off'."""
    settings = _ema_settings(Path(run_dir))
    if settings is None:
        return 'EMA off'
    words = [f'decay {settings["decay"]:g}']
    words += [f'+{d:g}' for d in settings.get('extra_decays') or []]
    words += [f'+std {s:g}' for s in settings.get('stds') or []]
    if settings.get('use_warmup'):
        words.append('warmup')
    if (settings.get('update_every') or 1) > 1:
        words.append(f'every {settings["update_every"]}')
    if settings.get('force_cpu'):
        words.append('host')
    return ' '.join(words)


def _read_rows(run_dir: Path) -> list[dict]:
    if not run_dir.is_dir():
        what = 'is not a folder' if run_dir.exists() else 'does not exist'
        raise UserError(f'run folder {str(run_dir)!r} {what}; pass folders made by python -m jax_ema.train')
    if not (run_dir / 'summary.csv').is_file():
        raise UserError(f'{str(run_dir)!r} has no summary.csv; pass a run folder that finished at least one epoch')
    rows = reporting.read_summary(run_dir)
    if not rows:
        raise UserError(f'{str(run_dir / "summary.csv")!r} has no epochs yet; wait for the first epoch to end')
    missing = {'epoch', 'raw_eval_top1'} - set(rows[0])
    if missing:
        raise UserError(
            f'{str(run_dir / "summary.csv")!r} lacks the columns {sorted(missing)}; '
            'pass a run folder written by python -m jax_ema.train'
        )
    return rows


def _column(rows: list[dict], name: str) -> list:
    try:
        return [float(r[name]) if r.get(name) not in ('', None) else None for r in rows]
    except ValueError:
        raise UserError(f'summary.csv column {name!r} holds a non-number; the file is damaged') from None


def _member_names(run_dir: Path) -> list[str]:
    """'decay 0.999', ..., 'std 0.05', ... for each EMA member of a run (stack order)."""
    settings = _ema_settings(run_dir) or {}
    decays = [settings['decay']] + list(settings.get('extra_decays') or []) if settings.get('decay') else []
    return [f'decay {d:g}' for d in decays] + [f'std {s:g}' for s in settings.get('stds') or []]


def run_labels(run_dirs) -> list[str]:
    """`run_label` of each run; runs with the same settings get their folder name added."""
    run_dirs = [Path(d) for d in run_dirs]
    labels = [run_label(d) for d in run_dirs]
    return [f'{label} ({d.name})' if labels.count(label) > 1 else label for label, d in zip(labels, run_dirs)]


def plot_runs(run_dirs, out, metric: str = 'top1') -> Path:
    """Draw every run's raw (dashed) and EMA (solid) `metric` per epoch into `out` (labels: `run_labels`)."""
    from matplotlib.figure import Figure  # no pyplot: never changes the caller's matplotlib backend
    from matplotlib.ticker import MaxNLocator

    if metric not in METRICS:
        raise UserError(f'unknown metric {metric!r}; use one of {", ".join(METRICS)}')
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UserError('no run folder given; pass one or more folders made by python -m jax_ema.train')
    out = Path(out)
    fig = Figure(figsize=(7, 4.5))
    supported = fig.canvas.get_supported_filetypes()
    if out.suffix.lstrip('.').lower() not in supported:
        raise UserError(f'--out {str(out)!r} needs an image suffix: .{", .".join(sorted(supported))}')
    if not out.parent.is_dir():
        raise UserError(f'the folder of --out {str(out)!r} does not exist; create it or pick another path')
    all_rows = [_read_rows(d) for d in run_dirs]
    labels = run_labels(run_dirs)

    ax = fig.add_subplot()
    for i, (rows, label) in enumerate(zip(all_rows, labels)):
        colour = f'C{i % 10}'
        epochs = [int(r['epoch']) for r in rows]
        raw, ema = _column(rows, f'raw_eval_{metric}'), _column(rows, f'ema_eval_{metric}')
        ax.plot(epochs, raw, linestyle='--', marker='.', color=colour, label=f'{label}: raw')
        if any(v is not None for v in ema):
            ax.plot(epochs, ema, linestyle='-', marker='o', color=colour, label=f'{label}: EMA')
        names = _member_names(run_dirs[i])
        for j, prefix in enumerate(reporting.member_prefixes(rows[0])[1:], start=1):  # further EMAs: dotted
            ax.plot(
                epochs,
                _column(rows, f'{prefix}_eval_{metric}'),
                linestyle=':',
                marker='osv^<>*'[j % 7],
                color=colour,
                label=f'{label}: EMA {names[j] if j < len(names) else prefix}',
            )
    ax.set(xlabel='epoch', ylabel=METRICS[metric], title=f'raw (dashed) vs EMA (solid) weights, {metric}')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise UserError(f'cannot write {str(out)!r} ({e.strerror}); pick a writable path') from None
    return out


def main(argv=None) -> int:
    def run():
        parser = ArgumentParser(prog='python -m jax_ema.plot', description=__doc__.splitlines()[0])
        parser.add_argument('runs', nargs='+', metavar='RUN', help='run folders (output/train/...)')
        parser.add_argument('--out', required=True, help='image file to write, e.g. runs.png')
        parser.add_argument('--metric', default='top1', choices=tuple(METRICS))
        args = parser.parse_args(argv)
        print(plot_runs(args.runs, args.out, args.metric))

    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
