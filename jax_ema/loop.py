"""The epoch loop: the steps of one epoch with a tqdm bar, the NaN guard, and the recovery and preemption hook.

Nothing here syncs with the device per step: the loss and the finite flag are accumulated on device
and read every `log_interval` updates (there timm's `Train:` line is logged: timm_log.py), at the end of
the epoch and before any save. The tqdm bar shows only where stderr is a terminal; the log lines then
print above it.
"""

from __future__ import annotations

import contextlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jax_ema import faults, timm_log
from jax_ema.faults import SIGNAL_AT_UPDATE  # noqa: F401  (the tests' "N:SIG" variable, kept here too)
from jax_ema.guard import TrainingDiverged


def train_epoch(
    step,
    state,
    batches,
    *,
    epoch,
    num_epochs,
    updates_per_epoch,
    first_update,
    schedule,
    log_interval,
    after_update=None,
):
    """Run the epoch's remaining updates with `step` (offload.build_step's). `after_update(state,
    update_count, check_finite)` may save a recovery checkpoint; it returns (state, stop).
    Logs timm's `Train:` line at the host syncs: every `log_interval` updates and on the epoch's last (timm
    logs at its update 0, L, 2L, ...; we at L-1, 2L-1, ..., not to add a sync).
    Returns (state, mean train loss, stopped)."""
    loss_sum, finite, n = jnp.zeros(()), jnp.array(True), 0
    update_time, data_time, data_since, logged_at = timm_log.Timer(), 0.0, 0.0, 0
    bar = tqdm(
        total=updates_per_epoch,
        initial=first_update,
        desc=f'Train {epoch}/{num_epochs - 1}',
        unit='step',
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
        disable=None if jax.process_index() == 0 else True,
    )  # off unless a tty, and on process 0
    stopped = False

    def check(loss_sum, finite, count, loss=None):
        """The host sync: (mean loss so far, `loss` read too); raises if any loss was not finite."""
        loss_sum, finite, loss = jax.device_get((loss_sum, finite, loss))
        if not bool(finite):
            raise TrainingDiverged(
                f'the training loss became NaN/Inf by update {count} (epoch {epoch}); the run '
                'stopped and nothing non-finite was saved. Lower --lr or check the data'
            )
        return float(loss_sum) / max(n, 1), loss

    data_start = time.perf_counter()
    with _logs_above(bar):
        for batch in batches:
            data_since += time.perf_counter() - data_start  # waiting for the input (host time, no sync)
            count_before = epoch * updates_per_epoch + first_update + n
            state, metrics = step(state, batch, count_before + 1)
            loss_sum = loss_sum + metrics['loss']
            finite = finite & jnp.isfinite(metrics['loss'])
            n += 1
            bar.update(1)
            update_idx = first_update + n - 1  # in the epoch, from 0, as timm counts
            if n % log_interval == 0 or update_idx == updates_per_epoch - 1:  # the sync there was anyway
                loss_avg, loss_now = check(loss_sum, finite, count_before + 1, metrics['loss'])  # the host sync
                update_time.tick(n - logged_at)
                data_time += data_since
                timm_log.train_line(
                    epoch,
                    update_idx,
                    updates_per_epoch,
                    float(loss_now),
                    loss_avg,
                    update_time,
                    int(np.size(batch['label'])),
                    float(schedule(count_before)),
                    data_since / (n - logged_at),
                    data_time / n,
                )
                bar.set_postfix(loss=f'{loss_avg:.4f}')
                data_since, logged_at = 0.0, n
            faults.hit('update', count_before + 1)  # the tests' kill / signal at a known update
            if after_update is not None:
                state, stopped = after_update(
                    state,
                    count_before + 1,
                    lambda: check(loss_sum, finite, count_before + 1)[0],  # noqa: B023
                )
                if stopped:
                    break
            data_start = time.perf_counter()
    bar.close()
    train_loss = check(loss_sum, finite, epoch * updates_per_epoch + first_update + n)[0]
    return state, train_loss, stopped


def _logs_above(bar):
    """Where the bar shows, log lines are written above it (tqdm's logging redirect); else nothing changes."""
    if bar.disable:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
