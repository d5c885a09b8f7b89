"""The run's records: its folder and lock, checkpoints, summary.csv, TensorBoard, metrics.png, results.json.

The checkpoints are the truth (issue 13): each one holds the summary rows up to it, an epoch's row is written
after its checkpoint, and a resume that goes on in its run folder rewrites summary.csv from the checkpoint it
starts from, so a kill at any point never leaves a row the checkpoint lacks. Process 0 holds the run folder's
lock (run_dir.py) from `Records.open` to `close`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jax_ema import checkpoint, data_fingerprint, ema, faults, optim, parallel, reporting, run_dir as run_dir_lib
from jax_ema.plateau import PlateauSchedule

log = logging.getLogger('jax_ema.train')

METRIC_KEYS = ('loss', 'top1', 'top5')
_PLACEMENT_NOTE = {'device': '', 'host': ' on host', 'sharded': ' sharded'}


@dataclasses.dataclass
class Records:
    """The run folder's writers: checkpoints (orbax), summary.csv rows, TensorBoard, metrics.png, results.json."""

    run_dir: Path
    manager: Any
    board: reporting.TensorBoard
    rows: list
    fingerprint: dict  # of the data and the global batch, saved in every checkpoint
    start: int  # the update count this session started from
    carried_loss: dict | None  # {'sum', 'count'} of the resumed epoch's train losses before the resume
    continuing: bool  # a resume going on in its own run folder

    @classmethod
    def open(
        cls,
        run,
        run_dir,
        resumed_from,
        resumed_meta,
        start: int,
        data_fp: dict,
        carried_loss,
        cleanup: contextlib.ExitStack,
    ) -> Records:
        """Claim the run folder (a new one, or the resumed run's when it goes on there) and its lock; args.yaml
        (args-resume-<n>.yaml on a resume), summary.csv trimmed to the checkpoint's rows. `cleanup` closes all."""
        config = run.config
        if parallel.is_main():
            run_dir, lock = run_dir_lib.claim(
                run_dir, config.output, config.experiment, config.model, config.img_size, resumed_from
            )
            cleanup.enter_context(lock)
        run_dir = Path(parallel.broadcast_path(run_dir))  # process 0's
        continuing = resumed_from is not None and run_dir_lib.goes_on(run_dir, resumed_from)
        log.info('Run folder: %s', run_dir)
        reporting.write_args(run_dir, config)
        manager = checkpoint.open_manager(run_dir / 'checkpoints', config.checkpoint_hist)
        cleanup.callback(manager.close)
        rows = reporting.rows_at_checkpoint(run_dir, resumed_meta, start // run.updates_per_epoch) if continuing else []
        if continuing:  # summary.csv, metrics.png and results.json as the checkpoint stands for them, at once
            reporting.rewrite_records(
                run_dir, rows, final_results(run, rows), ema.member_names(run.ema_cfg) if run.ema_cfg else None
            )
        board = reporting.TensorBoard(
            run_dir, purge_step=(int(rows[-1]['epoch']) + 1 if rows else 0) if continuing else None
        )
        cleanup.callback(board.close)
        ema_note = (
            'off'
            if run.ema_cfg is None
            else (', '.join(ema.member_names(run.ema_cfg)) + _PLACEMENT_NOTE[config.ema_placement])
        )
        log.info(
            'Model %s (%d classes), %d train / %d validation images, %d updates per epoch, lr %g, EMA %s',
            config.model,
            run.num_classes,
            run.train_ds.num_examples,
            run.val_ds.num_examples,
            run.updates_per_epoch,
            run.lr,
            ema_note,
        )
        fingerprint = dict(data=data_fp, global_batch_size=run.batch_size, updates_per_epoch=run.updates_per_epoch)
        return cls(run_dir, manager, board, rows, fingerprint, start, carried_loss, continuing)

    def metadata(self, run, epoch: int, position: int, metrics=None) -> dict:
        """checkpoint.run_metadata plus the records: the data's fingerprint and the summary rows so far."""
        meta = checkpoint.run_metadata(run.config, run.num_classes, run.ema_cfg, epoch, position, metrics)
        meta.update(self.fingerprint, summary=list(self.rows))
        meta['unreadable_found'] = [[i, e, s] for i, (e, s) in sorted(run.train_ds.found.items())]  # for a resume
        if isinstance(run.schedule, PlateauSchedule):  # its state as of the epoch the checkpoint goes on with
            meta['lr_plateau'] = run.schedule.state_dict()
        return meta

    def epoch_loss(self, run, epoch: int, mean: float, done: int) -> dict:
        """{'sum', 'count'} of the epoch's train losses after `done` of its updates (with those before a resume);
        `mean` is this session's mean over its updates of the epoch."""
        resumed_epoch = self.start // run.updates_per_epoch
        first = self.start - epoch * run.updates_per_epoch if epoch == resumed_epoch else 0
        base = self.carried_loss if self.carried_loss and epoch == resumed_epoch else {'sum': 0.0, 'count': 0}
        return {'sum': base['sum'] + mean * (done - first), 'count': base['count'] + done - first}

    def save_recovery(self, run, state, epoch: int, position: int, mean_loss: float) -> None:
        """A checkpoint within an epoch (a recovery interval or a preemption), with the epoch's loss so far."""
        meta = self.metadata(run, epoch, position)
        meta['train_loss_partial'] = self.epoch_loss(run, epoch, mean_loss, position)
        checkpoint.save(self.manager, state, meta)

    def end_epoch(self, run, state, epoch: int, train_loss: float, metrics: dict, saved=None) -> None:
        """The checkpoint scored by the best EMA (else the raw weights) first, or, given `saved` (a checkpoint
        of this state, saved before a stop on the epoch's last update), its validation; then the epoch's row
        in summary.csv, TensorBoard, metrics.png and results.json: a kill never leaves a row the checkpoint lacks."""
        raw, ema_metrics, members, best = metrics['raw'], metrics['ema'], metrics['members'], metrics['best']
        epoch_lr = float(run.schedule((epoch + 1) * run.updates_per_epoch - 1))  # timm: lr at the epoch's end
        row = reporting.summary_row(epoch, train_loss, epoch_lr, raw, ema_metrics, members[1:])
        scored = (members or [ema_metrics or raw])[best]
        if isinstance(run.schedule, PlateauSchedule):  # timm: step(epoch + 1, the eval metric) after the save
            run.schedule.step(epoch + 1, scored[run.config.eval_metric])
        meta = self.metadata(run, epoch, run.updates_per_epoch, {'raw': raw, 'ema': ema_metrics})
        meta['unreadable_images'] = run.train_ds.skipped_images(epoch)  # slots that took the next image
        if members:
            meta.update(best_ema_index=best, metrics=dict(meta['metrics'], ema_members=members))
        meta['summary'].append(row)
        score = run.score(scored)
        if saved is None:
            checkpoint.save(self.manager, state, meta, score)
        else:
            checkpoint.record_validation(self.manager, saved, meta, score)
        self.rows.append(row)
        reporting.write_summary(self.run_dir, self.rows)
        faults.hit('save:after-summary', (epoch + 1) * run.updates_per_epoch)
        self.board.scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
        reporting.plot_metrics(
            self.run_dir, self.rows, member_names=ema.member_names(run.ema_cfg) if run.ema_cfg else None
        )
        reporting.write_results(self.run_dir, final_results(run, self.rows))


def unvalidated_epoch(meta: dict | None) -> int | None:
    """The epoch a checkpoint stopped on the last update of, before validating it (None for any other)."""
    if meta is None or meta.get('metrics') is not None or 'updates_per_epoch' not in meta:
        return None
    return int(meta['epoch']) if meta.get('position') == meta['updates_per_epoch'] else None


def resume_position(run, state, meta: dict, data_fp: dict, step_dir):
    """(state, the resumed epoch's train losses so far or None) for a resume from `meta`'s checkpoint.

    When the training data or the global batch differ from the checkpoint's, the epochs are sliced anew: the
    run goes on from the start of the next epoch under the new updates-per-epoch, with the update count (the
    lr schedule's count and the EMA step) set there, and one warning line saying what changed.
    """
    changed = data_fingerprint.changes(meta.get('data'), data_fp, 'train')
    changed = [f'the training data ({", ".join(changed)})'] if changed else []
    if meta.get('global_batch_size') not in (None, run.batch_size):
        changed.append(f'the global batch ({meta["global_batch_size"]} -> {run.batch_size})')
    elif meta.get('updates_per_epoch') not in (None, run.updates_per_epoch):  # --epoch-repeats, --train-batches-...
        changed.append(f'the updates per epoch ({meta["updates_per_epoch"]} -> {run.updates_per_epoch})')
    if not changed:
        val_changed = data_fingerprint.changes(meta.get('data'), data_fp, 'validation')
        if val_changed:
            log.warning(
                'The validation data (%s) changed since %s; the summary rows before this resume were '
                'measured on the old one',
                ', '.join(val_changed),
                step_dir,
            )
        epoch, position = divmod(int(jax.device_get(state.step)), run.updates_per_epoch)
        run.train_ds.restore_unreadable(meta.get('unreadable_found', []), epoch, position)
        return state, meta.get('train_loss_partial') if position else None
    epoch, start = data_fingerprint.next_epoch_start(meta, run.updates_per_epoch)
    what = ' and '.join(changed)
    log.warning(
        '%s changed since %s; going on from the start of epoch %d: update %d, at %d updates per epoch '
        '(the lr schedule and the EMA step set there too)',
        what[0].upper() + what[1:],
        step_dir,
        epoch,
        start,
        run.updates_per_epoch,
    )
    step = jnp.asarray(start, jnp.asarray(state.step).dtype)
    return state.replace(step=step, opt_state=optim.at_step(state.opt_state, start)), None


def validates(run, epoch: int) -> bool:
    """timm's --val-interval: validate (and checkpoint) after every Nth epoch and after the last."""
    return (epoch + 1) % run.config.val_interval == 0 or epoch + 1 == run.num_epochs


def start_at_epoch(run, state, meta: dict | None, epoch: int):
    """(state, meta) for --start-epoch: the update count (the lr schedule's and the EMA step) set to the
    epoch's start, as timm's train.py counts updates from epoch * updates_per_epoch; a resumed checkpoint's
    summary rows from that epoch on dropped, its position, partial loss and plateau state forgotten."""
    start = epoch * run.updates_per_epoch
    step = jnp.asarray(start, jnp.asarray(state.step).dtype)
    state = state.replace(step=step, opt_state=optim.at_step(state.opt_state, start))
    if meta is not None:
        rows = [r for r in meta.get('summary') or [] if int(r['epoch']) < epoch]
        meta = dict(meta, summary=rows, position=0, train_loss_partial=None, lr_plateau=None)
    return state, meta


def restore_plateau(run, meta: dict | None, start: int) -> None:
    """The plateau schedule's state from a resumed checkpoint's metadata; else, as timm's train.py does on a
    (re)start at a later epoch, a fresh one stepped to it without a metric."""
    if not isinstance(run.schedule, PlateauSchedule):
        return
    saved = (meta or {}).get('lr_plateau')
    if saved:
        run.schedule.load_state_dict(saved)
    elif start >= run.updates_per_epoch:
        run.schedule.step(start // run.updates_per_epoch)


# ---------------------------------------------------------------- results


def final_results(run, rows: list[dict]) -> dict | None:
    """results.json: the best epoch's metric (over every EMA member too), the last epoch's metrics, the EMA;
    None before any epoch was validated."""
    if not rows:
        return None
    config, ema_cfg = run.config, run.ema_cfg
    scores = [(run.score({k: r[f'eval_{k}'] for k in METRIC_KEYS}), int(r['epoch'])) for r in rows]
    best_score, best_epoch = max(scores, key=lambda se: (se[0], -se[1]))
    several = ema_cfg is not None and ema_cfg.members > 1
    if several:  # the best over every member too
        best_score, best_epoch, best_member = best_over_rows(rows, run.score)
    best_value = -best_score if config.eval_metric == 'loss' else best_score
    results = {
        'best_metric': best_value,
        'best_epoch': best_epoch,
        'final': {'raw': _final(rows[-1], 'raw'), 'ema': _final(rows[-1], 'ema') if ema_cfg else None},
        'ema': (
            dict(dataclasses.asdict(ema_cfg), force_cpu=config.model_ema_force_cpu, shard=config.model_ema_shard)
            if ema_cfg
            else None
        ),
    }
    if several:
        results.update(
            ema_decays=list(ema_cfg.decays),
            ema_stds=list(ema_cfg.stds),
            best_ema_index=best_member,
            best_ema=describe_member(ema_cfg, best_member),
        )
        results['final']['ema_members'] = [_final(rows[-1], prefix) for prefix in reporting.member_prefixes(rows[-1])]
    return results


def best_over_rows(rows: list[dict], score) -> tuple[float, int, int]:
    """(best score, its epoch, its member) over every epoch and EMA member of summary.csv rows; ties: the
    earliest epoch, then the lower member."""
    best = None
    for row in rows:
        for i, prefix in enumerate(reporting.member_prefixes(row)):
            value = score({k: float(row[f'{prefix}_eval_{k}']) for k in METRIC_KEYS})
            key = (value, -int(row['epoch']), -i)
            best = key if best is None or key > best else best
    return best[0], -best[1], -best[2]


def describe_member(cfg: ema.EmaConfig, index: int) -> dict:
    """{'index': i, 'decay': d} or {'index': i, 'std': s} for member `index`."""
    if index < len(cfg.decays):
        return {'index': index, 'decay': cfg.decays[index]}
    return {'index': index, 'std': cfg.stds[index - len(cfg.decays)]}


def _final(row: dict, prefix: str) -> dict:
    return {k: float(row[f'{prefix}_eval_{k}']) for k in METRIC_KEYS}
