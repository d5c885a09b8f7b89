"""Learning-rate schedules with timm's semantics (timm.scheduler, as `create_scheduler_v2` builds them).

`create_lr_schedule(...)` returns `schedule(u)`, the lr timm's scheduler has set on the optimizer when
optimizer update `u` (0-based: the update count before it) runs, given that timm's train.py steps it with
`step(epoch + 1)` at each epoch end and `step_update(num_updates)` after each update, and the number of
epochs timm trains for. Per-epoch schedules (the default) depend on epoch = u // updates_per_epoch,
per-update ones (`sched_on_updates`) on u.

* cosine, tanh, poly: timm's cycle schedulers (`--lr-cycle-mul --lr-cycle-decay --lr-cycle-limit`; cosine
  and poly also `--lr-k-decay`; poly's power is `--decay-rate`, as timm overloads it). Which cycle an update
  falls in is decided on the host with timm's own float64 expression, so restarts land on the same update.
* step (`--decay-epochs`), multistep (`--decay-milestones`, timm's `bisect_right(milestones, t + 1)`),
  constant (warmup, then lr): piecewise constant, segments computed on the host in float64.
* plateau: metric driven, not a function of the update count: `plateau.PlateauSchedule`, stepped by the
  trainer at each epoch end with the eval metric.
* none: lr throughout (timm builds no scheduler: no warmup, no noise).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import lr_noise
from jax_ema.errors import UserError

SCHEDULE_NAMES = ('cosine', 'tanh', 'poly', 'step', 'multistep', 'constant', 'plateau', 'none')
CYCLIC = ('cosine', 'tanh', 'poly')
TANH_BOUNDS = (-7.0, 3.0)  # timm TanhLRScheduler's lb, ub


def _float_dtype():
    """float64 when jax x64 is enabled (at trace time), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _check_count(name: str, value, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise UserError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def check_cycles(cycle_mul: float, cycle_decay: float, cycle_limit: int, k_decay: float) -> None:
    """One-line UserErrors for cycle settings timm would crash on or that cannot be meant."""
    if not cycle_mul > 0:
        raise UserError(f'--lr-cycle-mul must be > 0 (the cycle length multiplier), got {cycle_mul}')
    if not cycle_decay >= 0:
        raise UserError(f'--lr-cycle-decay must be >= 0, got {cycle_decay}')
    if int(cycle_limit) != cycle_limit or cycle_limit < 1:
        raise UserError(f'--lr-cycle-limit must be an integer >= 1 (1: one cycle, no restarts), got {cycle_limit}')
    if not k_decay > 0:
        raise UserError(f'--lr-k-decay must be > 0, got {k_decay}')


def check_milestones(milestones: Sequence[int]) -> None:
    values = list(milestones)
    if not values or any(int(m) != m or m < 0 for m in values) or values != sorted(values):
        raise UserError(f'--decay-milestones must be increasing epoch numbers >= 0, e.g. 30 60 90; got {values}')


# --------------------------------------------------------------------------- cycles


def _timm_cycle(t: int, t_initial: int, mul: float) -> int | None:
    """timm's cycle index of t (cycle_mul != 1), or None where timm's log has no value (past its cycles)."""
    x = 1 - t / t_initial * (1 - mul)
    return math.floor(math.log(x, mul)) if x > 0 else None


def cycle_table(t_initial: int, mul: float, decay: float, limit: int, lr: float, t_end: int):
    """Per cycle i < limit, as timm computes them: (first t of the cycle, offset subtracted from t, length
    t_i, peak lr * decay**i); the entry `limit` starts where timm's lr is min_lr for good (or t_end + 1)."""
    starts, offsets, lengths, peaks = [0], [], [], []
    for i in range(limit):
        if mul == 1:
            offsets.append(float(t_initial * i))
            lengths.append(float(t_initial))
            nxt = t_initial * (i + 1)
        else:
            offsets.append((1 - mul**i) / (1 - mul) * t_initial)
            lengths.append(mul**i * t_initial)
            nxt = max(starts[-1], math.ceil(t_initial * (mul ** (i + 1) - 1) / (mul - 1)) - 2)
            while nxt <= t_end and _timm_cycle(nxt, t_initial, mul) in range(i + 1):
                nxt += 1  # the first t timm puts past cycle i (or beyond its log's domain: None)
        peaks.append(lr * decay**i)
        starts.append(min(nxt, t_end + 1))
    return (
        np.asarray(starts[1:], np.int64),
        np.asarray(offsets + [0.0]),
        np.asarray(lengths + [1.0]),
        np.asarray(peaks + [0.0]),
    )


def cycle_lr(sched: str, x, length, peak, min_lr: float, k_decay: float, power: float, xp=jnp):
    """lr at `x` updates/epochs into a cycle of `length` peaking at `peak` (numpy or jax arrays, via `xp`).

    cosine: timm's min + (peak - min)(1 + cos(pi x^k / L^k)) / 2, written as (peak - min) sin^2(pi r / 2)
    with r = (L^k - x^k) / L^k, free of cancellation near the cycle's end (matters in float32); tanh:
    min + (peak - min)(1 - tanh(lb (1 - x/L) + ub x/L)) / 2; poly: min + (peak - min) r^power."""
    if sched == 'tanh':
        ratio = x / length
        lb, ub = TANH_BOUNDS
        return min_lr + 0.5 * (peak - min_lr) * (1 - xp.tanh(lb * (1.0 - ratio) + ub * ratio))
    whole = length**k_decay
    rest = (whole - x**k_decay) / whole
    if sched == 'cosine':
        return min_lr + (peak - min_lr) * xp.square(xp.sin(rest * (np.pi / 2)))
    return min_lr + (peak - min_lr) * rest**power  # poly


def cycles_length(t_initial: int, mul: float, limit: int) -> int:
    """timm's get_cycle_length() without the warmup prefix."""
    if mul == 1:
        return t_initial * max(1, limit)
    return int(math.floor(-t_initial * (mul ** max(1, limit) - 1) / (1 - mul)))


# --------------------------------------------------------------------------- the schedule


def _step_segments(sched, t_max, decay_t, milestones, decay_rate, lr):
    """(t where the decay count changes, lr of each segment) for step / multistep / constant, t in [0, t_max]."""
    ts = np.arange(t_max + 1, dtype=np.float64)
    if sched == 'multistep':  # timm: bisect_right(milestones, t + 1)
        counts = np.asarray([bisect.bisect_right(milestones, t + 1) for t in range(t_max + 1)], np.float64)
    else:
        counts = np.floor_divide(ts, float(decay_t))
    change_at = np.flatnonzero(np.diff(counts)) + 1
    return change_at, np.array([lr * decay_rate ** float(k) for k in counts[np.r_[0, change_at]]])


def create_lr_schedule(
    sched: str,
    lr: float,
    epochs: int,
    updates_per_epoch: int,
    warmup_epochs: int,
    warmup_lr: float,
    min_lr: float,
    sched_on_updates: bool = False,
    decay_epochs: float = 90,
    decay_rate: float = 0.1,
    cooldown_epochs: int = 0,
    warmup_prefix: bool = False,
    noise: Sequence[float] | None = None,
    noise_pct: float = 0.67,
    noise_std: float = 1.0,
    noise_seed: int = 42,
    *,
    decay_milestones: Sequence[int] = (90, 180, 270),
    cycle_mul: float = 1.0,
    cycle_decay: float = 0.5,
    cycle_limit: int = 1,
    k_decay: float = 1.0,
    patience_epochs: int = 10,
    plateau_mode: str = 'max',
) -> tuple[Callable, int]:
    """(schedule, num_epochs) as timm's `create_scheduler_v2` + train.py's stepping (see the module doc).

    num_epochs is what timm trains for: the cycle schedules' cycles (+ warmup prefix) + cooldown, the others
    epochs (+ warmup prefix). `noise` (--lr-noise: on/off fractions of `epochs`), `noise_pct`, `noise_std`,
    `noise_seed` (--seed): timm's lr noise (`lr_noise`), the same draws as timm's. For 'plateau' the schedule
    is a `plateau.PlateauSchedule` (host state, stepped with the metric), not a jittable function.
    """
    if sched not in SCHEDULE_NAMES:
        raise UserError(f'unknown lr schedule {sched!r}; known: {", ".join(SCHEDULE_NAMES)}')
    upe = _check_count('updates_per_epoch', updates_per_epoch, 1)
    epochs = _check_count('epochs', epochs, 1)
    warmup_epochs = _check_count('warmup_epochs', warmup_epochs, 0)
    cooldown_epochs = _check_count('cooldown_epochs', cooldown_epochs, 0)
    if min_lr < 0:
        raise UserError(f'min_lr must be >= 0, got {min_lr}')
    if sched == 'step' and not decay_epochs > 0:
        raise UserError(f'decay_epochs must be > 0 for the step schedule, got {decay_epochs}')
    check_cycles(cycle_mul, cycle_decay, cycle_limit, k_decay)
    check_milestones(decay_milestones)
    lr_noise.check(noise, noise_pct, noise_std)
    lr, warmup_lr, min_lr = float(lr), float(warmup_lr), float(min_lr)
    num_epochs = epochs + (warmup_epochs if warmup_prefix else 0)

    if sched == 'none':  # timm returns no scheduler: the optimizer keeps lr throughout (and no noise).
        return (lambda count: jnp.full((), lr, _float_dtype())), num_epochs
    if sched == 'plateau':
        from jax_ema.plateau import PlateauSchedule

        plateau = PlateauSchedule(
            lr, warmup_epochs, warmup_lr, min_lr, decay_rate, patience_epochs, plateau_mode, sched_on_updates
        )
        plateau.set_noise(noise, noise_pct, noise_std, noise_seed, epochs, num_epochs)
        return plateau, num_epochs
    if sched == 'constant':  # timm: StepLRScheduler(decay_t=1, decay_rate=1.)
        decay_epochs, decay_rate = 1, 1.0

    # Lengths in schedule units (epochs, or updates when stepping per update).
    scale = upe if sched_on_updates else 1
    t_initial, warmup_t, cooldown_t = epochs * scale, warmup_epochs * scale, cooldown_epochs * scale
    if sched in CYCLIC:
        total_t = cycles_length(t_initial, cycle_mul, cycle_limit) + (warmup_t if warmup_prefix else 0) + cooldown_t
        num_epochs = total_t if not sched_on_updates else total_t // upe
    t_max = num_epochs * scale  # the last t train.py steps the scheduler to

    if sched in CYCLIC:
        starts, offsets, lengths, peaks = cycle_table(t_initial, cycle_mul, cycle_decay, cycle_limit, lr, t_max)
        shape = dict(min_lr=min_lr, k_decay=k_decay if sched != 'tanh' else 1.0, power=decay_rate)
    else:
        milestones = [int(m) * scale for m in decay_milestones]
        change_at, step_lrs = _step_segments(sched, t_max, decay_epochs * scale, milestones, decay_rate, lr)

    # Host float64 constants; timm's scheduler __init__ sets warmup_lr (or lr) before any step.
    warmup_to = lr
    if sched == 'tanh' and warmup_t and not warmup_prefix:  # timm warms up to the tanh curve's value there
        warmup_to = float(cycle_lr(sched, float(warmup_t), lengths[0], peaks[0], xp=np, **shape))
    warmup_step = (warmup_to - warmup_lr) / warmup_t if warmup_t else 0.0
    initial_lr = warmup_lr if warmup_t else lr
    noise_start, noise_stop = lr_noise.noise_window(noise, t_initial, t_max)
    noise_table = lr_noise.noise(np.arange(noise_start, noise_stop), noise_seed, noise_pct, noise_std)

    def schedule(count):
        dtype = _float_dtype()
        u = jnp.asarray(count).astype(jnp.int32)
        t = u if sched_on_updates else u // upe
        tt = t - warmup_t if warmup_prefix else t
        if sched in CYCLIC:
            i = jnp.searchsorted(jnp.asarray(starts, jnp.int32), tt, side='right')
            x = tt.astype(dtype) - jnp.asarray(offsets, dtype)[i]
            curve = cycle_lr(sched, x, jnp.asarray(lengths, dtype)[i], jnp.asarray(peaks, dtype)[i], **shape)
            after_warmup = jnp.where(i < cycle_limit, curve, jnp.asarray(min_lr, dtype))
        else:  # step / multistep / constant
            segment = jnp.searchsorted(jnp.asarray(change_at, jnp.int32), tt, side='right')
            after_warmup = jnp.asarray(step_lrs, dtype)[segment]
        warm = warmup_lr + t.astype(dtype) * warmup_step
        value = jnp.where(t < warmup_t, warm, after_warmup)
        if len(noise_table):  # timm: lr + lr * noise(t), for t in the noise window
            table = jnp.asarray(noise_table, dtype)
            noisy = value + value * table[jnp.clip(t - noise_start, 0, len(noise_table) - 1)]
            value = jnp.where((t >= noise_start) & (t < noise_stop), noisy, value)
        return jnp.where(t == 0, jnp.asarray(initial_lr, dtype), value).astype(dtype)

    return schedule, num_epochs


def schedule_kwargs(config) -> dict:
    """create_lr_schedule's keyword arguments from a `config.Config`'s schedule flags (all but lr and the
    update count), as timm's `scheduler_kwargs(args, decreasing_metric)` reads train.py's flags."""
    return dict(
        sched=config.sched,
        epochs=config.epochs,
        warmup_epochs=config.warmup_epochs,
        warmup_lr=config.warmup_lr,
        min_lr=config.min_lr,
        sched_on_updates=config.sched_on_updates,
        decay_epochs=config.decay_epochs,
        decay_rate=config.decay_rate,
        cooldown_epochs=config.cooldown_epochs,
        warmup_prefix=config.warmup_prefix,
        noise=config.lr_noise,
        noise_pct=config.lr_noise_pct,
        noise_std=config.lr_noise_std,
        noise_seed=config.seed,
        decay_milestones=config.decay_milestones,
        cycle_mul=config.lr_cycle_mul,
        cycle_decay=config.lr_cycle_decay,
        cycle_limit=config.lr_cycle_limit,
        k_decay=config.lr_k_decay,
        patience_epochs=config.patience_epochs,
        plateau_mode='min' if config.eval_metric == 'loss' else 'max',
    )
