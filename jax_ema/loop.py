"""The epoch loop: the steps of one epoch with a tqdm bar, the NaN guard, and the recovery and preemption hook.

Nothing here syncs with the device per step: the loss and the finite flag are accumulated on device
and read every `log_interval` updates, at the end of the epoch and before any save.
"""

from __future__ import annotations

import logging
import sys
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from jax_ema import faults
from jax_ema.faults import SIGNAL_AT_UPDATE  # noqa: F401  (the tests' "N:SIG" variable, kept here too)
from jax_ema.guard import TrainingDiverged

log = logging.getLogger(__name__)


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
    Returns (state, mean train loss, stopped)."""
    loss_sum, finite, n, seen, t0 = jnp.zeros(()), jnp.array(True), 0, 0, time.perf_counter()
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

    def check(loss_sum, finite, count):
        if not bool(finite):
            raise TrainingDiverged(
                f'the training loss became NaN/Inf by update {count} (epoch {epoch}); the run '
                'stopped and nothing non-finite was saved. Lower --lr or check the data'
            )
        return float(loss_sum) / max(n, 1)

    for batch in batches:
        count_before = epoch * updates_per_epoch + first_update + n
        state, metrics = step(state, batch, count_before + 1)
        loss_sum = loss_sum + metrics['loss']
        finite = finite & jnp.isfinite(metrics['loss'])
        n, seen = n + 1, seen + len(batch['label'])
        bar.update(1)
        if n % log_interval == 0 or first_update + n == updates_per_epoch:
            loss = check(loss_sum, finite, count_before + 1)  # the host sync, every log_interval
            bar.set_postfix(
                loss=f'{loss:.4f}',
                lr=f'{float(schedule(count_before)):.3g}',
                img_s=f'{seen / (time.perf_counter() - t0):.0f}',
            )
        faults.hit('update', count_before + 1)  # the tests' kill / signal at a known update
        if after_update is not None:
            state, stopped = after_update(state, count_before + 1, lambda: check(loss_sum, finite, count_before + 1))  # noqa: B023
            if stopped:
                break
    bar.close()
    train_loss = check(loss_sum, finite, epoch * updates_per_epoch + first_update + n)
    log.info('Train: %d  Loss: %.4f  (%d updates, %.1f img/s)', epoch, train_loss, n, seen / (time.perf_counter() - t0))
    return state, train_loss, stopped
