"""timm's `--sched plateau`: the lr decays when the eval metric stops improving, kept on the host.

timm's PlateauLRScheduler wraps torch's ReduceLROnPlateau (threshold 1e-4 relative, cooldown 0, eps 1e-8):
at each epoch end train.py calls `step(epoch + 1, metric)` (metric None on the epochs `--val-interval`
skips). Epochs up to `--warmup-epochs` get the linear warmup (the metric unused); after them a metric
better than best * (1 +- 1e-4) (mode 'max' for top1/top5, 'min' for loss) resets the count of bad epochs,
and more than `--patience-epochs` bad epochs in a row multiply the lr by `--decay-rate` (not below
`--min-lr`; a change under 1e-8 is skipped). `--lr-noise` perturbs the epoch's lr, the unperturbed one
being restored before the next step.

The trainer sets `lr` into the optimizer state at each epoch start (`optim.set_lr`) and saves `state_dict()`
in every checkpoint's metadata, so a resume goes on with the same best metric and patience count (timm's
own checkpoints do not keep them).
"""

from __future__ import annotations

import math

from jax_ema import lr_noise
from jax_ema.errors import UserError

THRESHOLD = 1e-4  # torch ReduceLROnPlateau's defaults, as timm builds it
EPS = 1e-8


def check(decay_rate: float, patience_epochs: int, sched_on_updates: bool) -> None:
    """One-line UserErrors for what timm's plateau scheduler would assert on (or torch refuse)."""
    if sched_on_updates:
        raise UserError('--sched plateau steps once per epoch (as in timm); drop --sched-on-updates')
    if not 0 <= decay_rate < 1:
        raise UserError(f'--sched plateau needs --decay-rate in [0, 1) (the lr factor), got {decay_rate}')
    if int(patience_epochs) != patience_epochs or patience_epochs < 0:
        raise UserError(f'--patience-epochs must be an integer >= 0, got {patience_epochs}')


class PlateauSchedule:
    """The plateau schedule's host state; `schedule(count)` is the lr of the epoch in progress."""

    def __init__(
        self,
        lr: float,
        warmup_epochs: int,
        warmup_lr: float,
        min_lr: float,
        decay_rate: float,
        patience_epochs: int,
        mode: str = 'max',
        sched_on_updates: bool = False,
    ):
        check(decay_rate, patience_epochs, sched_on_updates)
        if mode not in ('max', 'min'):
            raise UserError(f"plateau mode must be 'max' or 'min', got {mode!r}")
        self.warmup_epochs, self.warmup_lr, self.min_lr = int(warmup_epochs), float(warmup_lr), float(min_lr)
        self.decay_rate, self.patience, self.mode = float(decay_rate), int(patience_epochs), mode
        self.warmup_step = (float(lr) - self.warmup_lr) / self.warmup_epochs if self.warmup_epochs else 1.0
        self.noise_window, self.noise_args = (0, 0), None
        # The state (what a checkpoint keeps): timm's __init__ sets warmup_lr (or lr) before any step.
        self.lr = self.warmup_lr if self.warmup_epochs else float(lr)
        self.best = None  # None: no metric seen yet (torch's -inf / inf)
        self.num_bad_epochs = 0
        self.last_epoch = 0
        self.restore_lr = None

    def set_noise(self, noise, pct: float, std: float, seed: int, epochs: int, num_epochs: int) -> None:
        """--lr-noise as fractions of `epochs`, noise on epochs up to `num_epochs`."""
        self.noise_window = lr_noise.noise_window(noise, epochs, num_epochs)
        self.noise_args = (seed, pct, std)

    def __call__(self, count=None) -> float:
        return self.lr

    def _better(self, metric: float) -> bool:
        worst = -math.inf if self.mode == 'max' else math.inf
        best = worst if self.best is None else self.best
        if self.mode == 'max':
            return metric > best * (1.0 + THRESHOLD)
        return metric < best * (1.0 - THRESHOLD)

    def step(self, epoch: int, metric: float | None = None) -> None:
        """timm's PlateauLRScheduler.step(epoch, metric): the lr for epoch `epoch` (after epoch - 1 ended)."""
        if epoch <= self.warmup_epochs:
            self.lr = self.warmup_lr + epoch * self.warmup_step
            return
        if self.restore_lr is not None:  # the lr before the last noise
            self.lr, self.restore_lr = self.restore_lr, None
        if metric is not None:  # torch ReduceLROnPlateau.step(metric), cooldown 0
            metric = float(metric)
            self.last_epoch += 1
            if self._better(metric):
                self.best, self.num_bad_epochs = metric, 0
            else:
                self.num_bad_epochs += 1
            if self.num_bad_epochs > self.patience:
                reduced = max(self.lr * self.decay_rate, self.min_lr)
                if self.lr - reduced > EPS:
                    self.lr = reduced
                self.num_bad_epochs = 0
        start, stop = self.noise_window
        if start <= epoch < stop:
            seed, pct, std = self.noise_args
            self.restore_lr = self.lr
            self.lr = self.lr + self.lr * float(lr_noise.noise([epoch], seed, pct, std)[0])

    def state_dict(self) -> dict:
        """JSON-able state for a checkpoint's metadata."""
        keys = ('lr', 'best', 'num_bad_epochs', 'last_epoch', 'restore_lr')
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best, self.restore_lr = float(state['lr']), state['best'], state['restore_lr']
        self.num_bad_epochs, self.last_epoch = int(state['num_bad_epochs']), int(state['last_epoch'])
