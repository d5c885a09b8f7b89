"""The end of a training epoch: validate the raw weights and every EMA member (timm's `Test:` and
`Test (EMA):` lines), then the checkpoint and the run's records (records.py); on an epoch --val-interval
skips, neither, as timm."""

from __future__ import annotations

import logging
import typing

import jax
import numpy as np

from jax_ema import ema, faults, offload
from jax_ema.plateau import PlateauSchedule
from jax_ema.records import Records, validates
from jax_ema.step import TrainState, evaluate

if typing.TYPE_CHECKING:
    from jax_ema import train

log = logging.getLogger(__name__)


def end_epoch(
    run: train.Run, eval_step_fn, records: Records, state: TrainState, epoch: int, train_loss: float, saved=None
) -> None:
    """Validate and record the epoch (`_validate_and_record`), or on an epoch --val-interval skips, as timm,
    neither validate nor checkpoint, and step a plateau schedule without a metric."""
    if validates(run, epoch):
        _validate_and_record(run, eval_step_fn, records, state, epoch, train_loss, saved)
        return
    log.info('Skipping eval and checkpointing (--val-interval %d)', run.config.val_interval)
    if isinstance(run.schedule, PlateauSchedule):
        run.schedule.step(epoch + 1, None)


def _validate_and_record(
    run: train.Run, eval_step_fn, records: Records, state: TrainState, epoch: int, train_loss: float, saved=None
) -> None:
    """Validate the epoch's weights, then its checkpoint and records (`saved`: see Records.end_epoch)."""
    faults.hit('epoch-end:before-validate', (epoch + 1) * run.updates_per_epoch)
    records.end_epoch(run, state, epoch, train_loss, validate_epoch(run, eval_step_fn, state), saved)


def validate_epoch(run: train.Run, eval_step_fn, state: TrainState) -> dict:
    """{'raw', 'ema', 'members', 'best'}: the raw weights' metrics, the EMA's (member 0's), with several
    EMAs every member's (else []) and the index of the best one."""
    eval_batch_size = (run.config.validation_batch_size or run.config.batch_size) * jax.device_count()

    def evaluate_split(params, batch_stats, log_name='Test'):
        return evaluate(
            eval_step_fn, params, batch_stats, run.val_ds, eval_batch_size, log_name, run.config.log_interval
        )

    raw = evaluate_split(state.params, state.batch_stats)  # logs timm's `Test:` lines
    if state.ema_params is None:
        return dict(raw=raw, ema=None, members=[], best=0)
    names = ema.member_names(run.ema_cfg)  # member 0 is timm's `Test (EMA)`: summary.csv's eval_* columns
    labels = ['EMA'] + [f'EMA {n}' for n in names[1:]]
    members = evaluate_members(evaluate_split, *offload.ema_for_eval(state), labels)
    if len(members) == 1:
        return dict(raw=raw, ema=members[0], members=[], best=0)
    return dict(raw=raw, ema=members[0], members=members, best=best_index(members, run.score))


def evaluate_members(evaluate_one, ema_params, ema_stats, labels) -> list[dict]:
    """`evaluate_one(params, stats, log_name)` of every EMA member (one jitted eval serves all: same [n]
    shapes), each sent to the devices on its own and logged as `Test (<label>)`."""
    results = []
    for i, label in enumerate(labels):
        device_vars = offload.to_device((ema.member(ema_params, i), ema.member(ema_stats, i)))
        results.append(evaluate_one(*device_vars, f'Test ({label})'))
    return results


def best_index(member_metrics: list[dict], score) -> int:
    """The member with the highest `score(metrics)`; ties go to the lower index."""
    return int(np.argmax([score(m) for m in member_metrics]))
