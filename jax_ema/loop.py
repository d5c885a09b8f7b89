"""The epoch loop: steps with a tqdm bar, host-EMA dispatch, NaN guard, recovery and preemption hooks.

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

log = logging.getLogger('jax_ema.train')


class Stepper:
    """The train step, plus the EMA update when the EMA is not fused into it (held on the host, or
    updated every K > 1 updates): then the device step runs without the EMA, and the EMA is updated
    from its new params every `every` updates, folding in the updates since the last one (`gap`).
    `flush` folds in the pending ones; the trainer calls it before evaluating and before saving."""

    def __init__(self, p_train, ema_update=None, every: int = 1, last: int = 0):
        self.p_train, self.ema_update, self.every, self.last = p_train, ema_update, every, last

    def __call__(self, state, batch, count: int):
        """One optimizer update; `count` is the update count after it (known on the host: no sync)."""
        if self.ema_update is None:
            return self.p_train(state, batch)
        ema_params, ema_stats = state.ema_params, state.ema_batch_stats
        state, metrics = self.p_train(state.replace(ema_params=None, ema_batch_stats=None), batch)
        state = state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)
        if count % self.every == 0:
            state = self._apply(state, count)
        return state, metrics

    def flush(self, state, count: int):
        if self.ema_update is not None and count > self.last:
            state = self._apply(state, count)
        return state

    def _apply(self, state, count):
        ema_params, ema_stats = self.ema_update(state.ema_params, state.ema_batch_stats, state.params,
                                                state.batch_stats, state.step, count - self.last)
        self.last = count
        return state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)


def train_epoch(step, state, batches, *, epoch, num_epochs, updates_per_epoch, first_update, schedule,
                log_interval, after_update=None):
    """Run the epoch's remaining updates. `after_update(state, update_count, check_finite)` may save a
    recovery checkpoint; it returns (state, stop). Returns (state, mean train loss, stopped)."""
    loss_sum, finite, n, seen, t0 = jnp.zeros(()), jnp.array(True), 0, 0, time.perf_counter()
    bar = tqdm(total=updates_per_epoch, initial=first_update, desc=f'Train {epoch}/{num_epochs - 1}',
               unit='step', dynamic_ncols=True, leave=False, file=sys.stderr,
               disable=None if jax.process_index() == 0 else True)  # off unless a tty, and on process 0
    stopped = False

    def check(loss_sum, finite, count):
        if not bool(finite):
            raise TrainingDiverged(f'the training loss became NaN/Inf by update {count} (epoch {epoch}); the run '
                                   'stopped and nothing non-finite was saved. Lower --lr or check the data')
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
            bar.set_postfix(loss=f'{loss:.4f}', lr=f'{float(schedule(count_before)):.3g}',
                            img_s=f'{seen / (time.perf_counter() - t0):.0f}')
        faults.hit('update', count_before + 1)  # the tests' kill / signal at a known update
        if after_update is not None:
            state, stopped = after_update(state, count_before + 1,
                                          lambda: check(loss_sum, finite, count_before + 1))
            if stopped:
                break
    bar.close()
    train_loss = check(loss_sum, finite, epoch * updates_per_epoch + first_update + n)
    log.info('Train: %d  Loss: %.4f  (%d updates, %.1f img/s)', epoch, train_loss, n,
             seen / (time.perf_counter() - t0))
    return state, train_loss, stopped
