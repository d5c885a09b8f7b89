"""timm's console lines, so that scripts written for timm's output read ours unchanged.

Written through `logging` (the CLIs send it to stderr, as timm's `setup_default_logging`):
  train:    `Train: E [   i/N (pp%)]  Loss: now (avg)  Time: ...s, .../s  (...s, .../s)  LR: ...  Data: ... (...)`
  validate: `Test: [   i/last]  Time: ... (...)  Loss: ... (...)  Acc@1: ... (...)  Acc@5: ... (...)`, and
            `Test (EMA): ...` for the EMA weights;
  validate.py's own: `Test: [   i/N]  Time: ...s (...s, .../s)  Loss: ... (...)  Acc@1 ...`.
A value and its average in parentheses are timm's "last batch (running mean)". Our steps run ahead of the
host, so the times (and the test metrics) before the parentheses are the means over the updates (batches)
since the previous line, read at the same host sync; the train loss there is the last update's.

`RunningMeter` keeps the sums behind them; `Timer` the seconds between two lines.
"""

from __future__ import annotations

import dataclasses
import logging
import time

log = logging.getLogger('jax_ema.train')


@dataclasses.dataclass
class Timer:
    """Seconds per item over the last interval and since the start (timm's AverageMeter of batch times)."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    total: float = 0.0
    count: int = 0
    last: float = 0.0

    def tick(self, items: int) -> None:
        """`items` more (updates or batches) finished now; `last` is their mean time."""
        now = time.perf_counter()
        self.last = (now - self.start) / max(items, 1)
        self.total, self.count, self.start = self.total + now - self.start, self.count + items, now

    @property
    def avg(self) -> float:
        return self.total / max(self.count, 1)


def train_line(epoch, update_idx, updates_per_epoch, loss_now, loss_avg, time_m, rows, lr, data_now, data_avg):
    """timm's `Train:` line for the epoch's update `update_idx` (0-based); `rows`: images in one update."""
    log.info(
        'Train: %d [%4d/%d (%3.0f%%)]  Loss: %#.3g (%#.3g)  Time: %.3fs, %7.2f/s  (%.3fs, %7.2f/s)  LR: %.3e  '
        'Data: %.3f (%.3f)',
        epoch,
        update_idx,
        updates_per_epoch,
        100.0 * (update_idx + 1) / updates_per_epoch,
        loss_now,
        loss_avg,
        time_m.last,
        rows / max(time_m.last, 1e-9),
        time_m.avg,
        rows / max(time_m.avg, 1e-9),
        lr,
        data_now,
        data_avg,
    )


def test_line(name, batch_idx, last_idx, time_m, now: dict, avg: dict, rows: int = 0, cli: bool = False):
    """timm's `Test:` line (`name`: 'Test', 'Test (EMA)'); `now`/`avg`: loss, top1, top5 of the batches since
    the previous line and of all so far. `cli`: validate.py's variant (images/s, 4 decimals of loss)."""
    if cli:
        log.info(
            '%s: [%4d/%d]  Time: %.3fs (%.3fs, %7.2f/s)  Loss: %7.4f (%6.4f)  '
            'Acc@1: %7.3f (%7.3f)  Acc@5: %7.3f (%7.3f)',
            name,
            batch_idx,
            last_idx,
            time_m.last,
            time_m.avg,
            rows / max(time_m.avg, 1e-9),
            now['loss'],
            avg['loss'],
            now['top1'],
            avg['top1'],
            now['top5'],
            avg['top5'],
        )
        return
    log.info(
        '%s: [%4d/%d]  Time: %.3f (%.3f)  Loss: %7.3f (%6.3f)  Acc@1: %7.3f (%7.3f)  Acc@5: %7.3f (%7.3f)',
        name,
        batch_idx,
        last_idx,
        time_m.last,
        time_m.avg,
        now['loss'],
        avg['loss'],
        now['top1'],
        avg['top1'],
        now['top5'],
        avg['top5'],
    )


def means(sums: dict) -> dict:
    """{'loss', 'top1', 'top5'} (top-k in percent) of eval sums with a 'count'."""
    count = max(float(sums['count']), 1.0)
    return {
        'loss': float(sums['loss']) / count,
        'top1': 100.0 * float(sums['top1']) / count,
        'top5': 100.0 * float(sums['top5']) / count,
    }
