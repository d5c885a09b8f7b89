"""The run folder, as timm's: args.yaml, summary.csv, results.json, TensorBoard events, metrics.png.

summary.csv starts with timm's columns and meaning (`eval_*` are the EMA's metrics when EMA is on),
then the raw and EMA metrics side by side. Top-1/5 are in percent. With several EMAs, `ema_eval_*` is the
first decay's and `ema<i>_eval_*` (i = 1, 2, ...) follow for the other members, in stack order (the
further decays, then the --model-ema-std ones).

With several processes only process 0 writes here (the writers below do nothing on the others);
checkpoints are written by all of them together (checkpoint.py).

The checkpoints are the truth: each holds the summary rows up to it, a resume rewrites summary.csv from
the one it starts from (as timm's `trim_summary` drops the rows at or after the resumed epoch), and an
epoch's row is written after its checkpoint. Every file is written to a temporary name and renamed, so
a reader never sees half a file. args.yaml keeps the settings a run was started with; each resume's
go beside it as args-resume-<n>.yaml.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import logging
import os
from pathlib import Path

import yaml

from jax_ema.errors import UserError

log = logging.getLogger('jax_ema.train')

SUMMARY_COLUMNS = (
    'epoch',
    'train_loss',
    'eval_loss',
    'eval_top1',
    'eval_top5',
    'lr',
    'raw_eval_loss',
    'raw_eval_top1',
    'raw_eval_top5',
    'ema_eval_loss',
    'ema_eval_top1',
    'ema_eval_top5',
)


def make_run_dir(output: str, experiment: str, model: str, img_size: int) -> Path:
    """`<output or ./output/train>/<experiment or date-model-img>`, never reusing a folder (timm's -N suffix)."""
    root = Path(output) if output else Path('output') / 'train'
    if root.exists() and not root.is_dir():
        raise UserError(f'--output {str(root)!r} is a file; give a folder path')
    name = experiment or '-'.join(
        [datetime.datetime.now().strftime('%Y%m%d-%H%M%S'), model.replace('/', '_'), str(img_size)]
    )
    run_dir, count = root / name, 1
    while True:
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except OSError as e:  # FileExistsError: there before, or made meanwhile by a trainer started at once
            if not (isinstance(e, FileExistsError) and os.path.lexists(run_dir)):  # not a parent in the way
                raise UserError(
                    f'cannot create the run folder {str(run_dir)!r} ({e.strerror}); choose a writable --output'
                ) from None
        run_dir, count = root / f'{name}-{count}', count + 1


def _writes() -> bool:
    import jax

    return jax.process_index() == 0


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all: a temporary file beside it, renamed over it. An OS failure (a full disk)
    is a UserError; nothing is lost, since a resume rewrites the records from the checkpoints."""
    tmp = path.with_name(f'.{path.name}.tmp')
    try:
        with open(tmp, 'wb') as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {str(path)!r} ({e.strerror}); the checkpoints hold the run's records: fix "
            f'this (free space?), then resume with --resume {str(path.parent)!r} to rewrite it'
        ) from None


def write_args(run_dir: Path, config) -> Path | None:
    """args.yaml, the settings the run was started with; when it exists (a resume), args-resume-<n>.yaml."""
    if not _writes():
        return None
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    path, count = run_dir / 'args.yaml', 1
    while path.exists():
        path, count = run_dir / f'args-resume-{count}.yaml', count + 1
    write_atomic(path, yaml.safe_dump(values, sort_keys=False))
    return path


def summary_row(epoch: int, train_loss: float, lr: float, raw: dict, ema: dict | None, more=()) -> dict:
    """One summary.csv row; `eval_*` follow timm (EMA metrics when EMA is on); `more`: the metrics of
    EMA members 1, 2, ... as `ema<i>_eval_*` columns after the usual ones."""
    main = ema or raw
    row = dict(
        epoch=epoch,
        train_loss=train_loss,
        eval_loss=main['loss'],
        eval_top1=main['top1'],
        eval_top5=main['top5'],
        lr=lr,
        raw_eval_loss=raw['loss'],
        raw_eval_top1=raw['top1'],
        raw_eval_top5=raw['top5'],
    )
    for key in ('loss', 'top1', 'top5'):
        row[f'ema_eval_{key}'] = '' if ema is None else ema[key]
    for i, metrics in enumerate(more, start=1):
        row.update({f'ema{i}_eval_{key}': metrics[key] for key in ('loss', 'top1', 'top5')})
    return row


def write_summary(run_dir: Path, rows: list[dict]) -> None:
    """summary.csv with exactly `rows` (rewritten whole: one row per validated epoch, whatever came before)."""
    if not _writes():
        return
    if not rows:
        (run_dir / 'summary.csv').unlink(missing_ok=True)
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator='\n')  # SUMMARY_COLUMNS, ema<i>_*
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(run_dir / 'summary.csv', text.getvalue())


def read_summary(run_dir) -> list[dict]:
    with (Path(run_dir) / 'summary.csv').open() as f:
        return list(csv.DictReader(f))


def rows_at_checkpoint(run_dir: Path, metadata: dict, start_epoch: int) -> list[dict]:
    """The summary rows a checkpoint stands for: those it records, else (a checkpoint of an older version)
    summary.csv's rows before `start_epoch`, as timm's trim_summary keeps them. Logs what is dropped or restored."""
    path = Path(run_dir) / 'summary.csv'
    on_disk = read_summary(run_dir) if path.is_file() else []
    rows = metadata.get('summary')
    if rows is None:
        rows = [r for r in on_disk if int(float(r['epoch'])) < start_epoch]
    on_disk_epochs, epochs = [int(float(r['epoch'])) for r in on_disk], [int(r['epoch']) for r in rows]
    if on_disk_epochs != epochs:
        log.info(
            'summary.csv: epochs %s on disk, the checkpoint stands for %s; rewriting it',
            on_disk_epochs or 'none',
            epochs or 'none',
        )
    return [dict(r) for r in rows]


def rewrite_records(run_dir: Path, rows: list[dict], results: dict | None, member_names=None) -> None:
    """summary.csv, metrics.png and results.json as `rows` make them (a resume's: the checkpoint's rows)."""
    write_summary(run_dir, rows)
    if rows:
        plot_metrics(run_dir, rows, member_names=member_names)
        write_results(run_dir, results)
    elif _writes():
        for name in ('metrics.png', 'results.json'):
            (run_dir / name).unlink(missing_ok=True)


def timm_results(rows: list[dict], eval_metric: str = 'top1', keep: int = 10) -> list[dict]:
    """What timm's train.py prints after `--result`: per epoch {'epoch', 'train': {'loss'}, 'validation':
    {'loss', 'top1', 'top5'}} (the EMA's when EMA is on, as summary.csv's eval_*), ordered worst to best by
    `eval_metric` (ties: by epoch), the last `keep`. Our other fields are in results.json."""
    epochs = [
        {
            'epoch': int(float(r['epoch'])),
            'train': {'loss': float(r['train_loss'])},
            'validation': {k: float(r[f'eval_{k}']) for k in ('loss', 'top1', 'top5')},
        }
        for r in rows
    ]
    epochs.sort(key=lambda e: e['validation'][eval_metric], reverse=eval_metric == 'loss')
    return epochs[-keep:]


def write_results(run_dir: Path, results: dict) -> None:
    if not _writes():
        return
    write_atomic(run_dir / 'results.json', json.dumps(results, indent=2))


class TensorBoard:
    """Scalar event files via tensorboardX (no tensorflow import outside data.py)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        """`purge_step`: a resume's first epoch; TensorBoard then hides the events of epochs from it on."""
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(run_dir / 'tensorboard'), purge_step=purge_step) if _writes() else None

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if value != '' and value is not None:
                self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def member_prefixes(row: dict) -> list[str]:
    """The summary.csv prefixes of the EMA members a row has: 'ema', then 'ema1', 'ema2', ..."""
    count = 1
    while f'ema{count}_eval_top1' in row:
        count += 1
    return ['ema'] + [f'ema{i}' for i in range(1, count)]


def plot_metrics(run_dir: Path, rows: list[dict], out: Path | None = None, member_names=None) -> Path:
    """metrics.png: raw vs EMA top-1 and loss per epoch (every EMA member, named by `member_names`)."""
    out = out or run_dir / 'metrics.png'
    if not _writes():
        return out
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    def column(name):
        return [float(r[name]) if r[name] not in ('', None) else None for r in rows]

    epochs = [int(r['epoch']) for r in rows]
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    prefixes = member_prefixes(rows[0])
    names = member_names if member_names and len(prefixes) > 1 else ['weights'] * len(prefixes)
    for prefix, label in [('raw', 'raw weights')] + [(p, f'EMA {n}') for p, n in zip(prefixes, names)]:
        top1, loss = column(f'{prefix}_eval_top1'), column(f'{prefix}_eval_loss')
        if any(v is not None for v in top1):
            ax_acc.plot(epochs, top1, marker='o', label=label)
            ax_loss.plot(epochs, loss, marker='o', label=label)
    ax_loss.plot(epochs, column('train_loss'), linestyle='--', label='train loss')
    ax_acc.set(xlabel='epoch', ylabel='validation top-1 (%)', title='Top-1')
    ax_loss.set(xlabel='epoch', ylabel='loss', title='Loss')
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=100, format='png')
    write_atomic(out, image.getvalue())
    return out
