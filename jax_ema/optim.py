"""Optimizers, learning-rate schedules and lr scaling, with timm's semantics.

Mirrors timm's `train.py` + `create_optimizer_v2` + `create_scheduler_v2` (timm 1.0.x;
the losses are losses.py's):

* `resolve_lr`: `--lr` derived from `--lr-base` when `--lr` is unset.
* `create_lr_schedule`: `schedule(u)` is the lr timm's scheduler has set on the optimizer
    when optimizer update `u` (0-based, i.e. the step count before the update) runs, given
    that train.py steps it with `step(epoch + 1)` at each epoch end and
    `step_update(num_updates)` after each update.
* `create_optimizer`: sgd (nesterov) / momentum / adam / adamw as the torch optimizers timm
    builds, rmsproptf(w) / lamb(c)(w) as timm's own (`optim_timm`), with timm's weight-decay
    param groups (no decay for biases and ndim <= 1 leaves).
    The lr used by the last update (what timm logs) is `current_lr(opt_state)`.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_ema import lr_noise, optim_timm
from jax_ema.errors import UserError

# timm's names; for the last six, the flags timm registers them with (trust_clip, decoupled_decay).
TIMM_OPTIMIZERS = {
    'rmsproptf': (False, False),
    'rmsproptfw': (False, True),
    'lamb': (False, False),
    'lambc': (True, False),
    'lambw': (False, True),
    'lambcw': (True, True),
}
OPTIMIZER_NAMES = ('sgd', 'nesterov', 'momentum', 'adam', 'adamw') + tuple(TIMM_OPTIMIZERS)
SCHEDULE_NAMES = ('cosine', 'step', 'constant', 'none')

# torch.optim.Adam / AdamW defaults, used by timm when --opt-eps / --opt-betas are unset.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _float_dtype():
    """float64 when jax x64 is enabled (at trace time), else float32."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


# --------------------------------------------------------------------------- lr scaling


def resolve_lr(
    lr: float | None, lr_base: float, lr_base_size: int, lr_base_scale: str, global_batch_size: int, opt: str
) -> float:
    """timm train.py: if `lr` is unset (None or 0), lr = lr_base * ratio, ratio = global batch / lr_base_size.

    `lr_base_scale` '' picks 'sqrt' for adaptive optimizers (name contains 'ada' or 'lamb')
    and 'linear' otherwise; with 'sqrt' the ratio is square-rooted. Global batch size is
    batch_size * world_size * grad_accum_steps (the caller computes it).
    """
    if lr:
        return float(lr)
    if lr_base_scale not in ('', 'linear', 'sqrt'):
        raise UserError(f"unknown lr_base_scale {lr_base_scale!r}; use '', 'linear' or 'sqrt'")
    if lr_base_size <= 0 or global_batch_size <= 0:
        raise UserError(
            f'lr_base_size ({lr_base_size}) and the global batch size '
            f'({global_batch_size}) must be positive; fix --lr-base-size / --batch-size'
        )
    batch_ratio = global_batch_size / lr_base_size
    if not lr_base_scale:
        name = opt.lower()
        lr_base_scale = 'sqrt' if any(o in name for o in ('ada', 'lamb')) else 'linear'
    if lr_base_scale == 'sqrt':
        batch_ratio = batch_ratio**0.5
    return lr_base * batch_ratio


# --------------------------------------------------------------------------- lr schedule


def _check_count(name: str, value, minimum: int) -> int:
    if int(value) != value or value < minimum:
        raise UserError(f'{name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


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
) -> tuple[Callable[[jax.Array], jax.Array], int]:
    """Returns (schedule, num_epochs) as timm's `create_scheduler_v2` + train.py's stepping.

    schedule(u) -> lr for optimizer update u (0-based). Per-epoch schedules (the default)
    depend on epoch = u // updates_per_epoch, per-update ones (`sched_on_updates`) on u.
    num_epochs is what timm trains for: cosine adds cooldown (and the warmup prefix), the
    other schedules add only the warmup prefix.
    Schedules: 'cosine', 'step', 'constant' (warmup, then lr), 'none' (lr, no warmup).
    `noise` (--lr-noise: on/off fractions of `epochs`), `noise_pct`, `noise_std`, `noise_seed` (--seed):
    timm's lr noise (`lr_noise`), the same draws as timm's. The step schedule's decay count t // decay_t
    and lr * decay_rate ** count are computed on the host in float64, as timm's Python does, so a
    fractional decay_epochs (2.4) steps at the same epochs in float32.
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
    lr_noise.check(noise, noise_pct, noise_std)
    lr, warmup_lr, min_lr = float(lr), float(warmup_lr), float(min_lr)

    if sched == 'none':  # timm returns no scheduler: the optimizer keeps lr throughout (and no noise).
        num_epochs = epochs + (warmup_epochs if warmup_prefix else 0)
        return (lambda count: jnp.full((), lr, _float_dtype())), num_epochs
    if sched == 'constant':  # timm: StepLRScheduler(decay_t=1, decay_rate=1.)
        decay_epochs, decay_rate = 1, 1.0

    # Lengths in schedule units (epochs, or updates when stepping per update).
    scale = upe if sched_on_updates else 1
    t_initial = epochs * scale
    warmup_t = warmup_epochs * scale
    decay_t = decay_epochs * scale
    cooldown_t = cooldown_epochs * scale
    if sched == 'cosine':
        total_t = t_initial + (warmup_t if warmup_prefix else 0) + cooldown_t
        num_epochs = total_t if not sched_on_updates else total_t // upe
    else:
        num_epochs = epochs + (warmup_epochs if warmup_prefix else 0)
    t_max = num_epochs * scale  # the last t train.py steps the scheduler to

    # Host float64 constants; timm's scheduler __init__ sets warmup_lr (or lr) before any step.
    warmup_step = (lr - warmup_lr) / warmup_t if warmup_t else 0.0
    initial_lr = warmup_lr if warmup_t else lr
    half_pi_over_t = np.pi / (2 * t_initial)
    if sched != 'cosine':  # k = tt // decay_t changes at `change_at`; lr * decay_rate ** k per segment
        counts = np.floor_divide(np.arange(t_max + 1, dtype=np.float64), float(decay_t))
        change_at = np.flatnonzero(np.diff(counts)) + 1
        step_lrs = np.array([lr * decay_rate ** float(k) for k in counts[np.r_[0, change_at]]])
    noise_start, noise_stop = lr_noise.noise_window(noise, t_initial, t_max)
    noise_table = lr_noise.noise(np.arange(noise_start, noise_stop), noise_seed, noise_pct, noise_std)

    def schedule(count):
        dtype = _float_dtype()
        u = jnp.asarray(count).astype(jnp.int32)
        t = u if sched_on_updates else u // upe
        tt = t - warmup_t if warmup_prefix else t
        if sched == 'cosine':
            # timm: min + 0.5 (lr - min)(1 + cos(pi tt / T)) == min + (lr - min) sin^2(pi (T - tt) / 2T),
            # the latter without cancellation near the end of the schedule (matters in float32).
            remaining = (t_initial - tt).astype(dtype)
            cos_lr = min_lr + (lr - min_lr) * jnp.square(jnp.sin(remaining * half_pi_over_t))
            after_warmup = jnp.where(tt < t_initial, cos_lr, jnp.asarray(min_lr, dtype))
        else:  # step / constant
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


# --------------------------------------------------------------------------- optimizers


def weight_decay_mask(params):
    """timm `param_groups_weight_decay`: decay only leaves with ndim > 1 not named 'bias'."""

    def decays(path, leaf):
        name = getattr(path[-1], 'key', getattr(path[-1], 'name', None)) if path else None
        return not (jnp.ndim(leaf) <= 1 or name == 'bias')

    return jax.tree_util.tree_map_with_path(decays, params)


def _scale_by_neg_lr(learning_rate) -> optax.GradientTransformation:
    """updates -> -lr * updates, lr cast to each update's dtype (keeps float32 float32)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g: -jnp.asarray(learning_rate, g.dtype) * g, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def create_optimizer(
    opt: str,
    lr_schedule: Callable[[jax.Array], jax.Array],
    weight_decay: float,
    momentum: float = 0.9,
    opt_eps: float | None = None,
    opt_betas: Sequence[float] | None = None,
) -> optax.GradientTransformation:
    """optax twin of timm `create_optimizer_v2(model, opt, lr, weight_decay, momentum, eps, betas)`.

    sgd/nesterov: torch SGD, nesterov, dampening 0; momentum: same without nesterov;
    adam: torch Adam (L2 decay added to the gradient); adamw: torch AdamW (decoupled decay,
    multiplied by lr); rmsproptf(w): timm RMSpropTF (alpha 0.9, `momentum`, w: decoupled decay);
    lamb / lambc / lambw / lambcw: timm Lamb (c: trust ratio clipped at 1, w: decoupled decay).
    eps defaults as timm's (adam 1e-8, rmsproptf 1e-10, lamb 1e-6); betas (adam, lamb) (0.9, 0.999).
    Weight decay is masked with `weight_decay_mask`. Call `update(grads, state, params)` with
    params; the state's `hyperparams['learning_rate']` is the lr of the last update
    (`current_lr`), in the params' dtype.
    """
    name = opt.lower()
    if name not in OPTIMIZER_NAMES:
        raise UserError(f'unknown optimizer {opt!r}; known: {", ".join(OPTIMIZER_NAMES)}')
    if weight_decay < 0:
        raise UserError(f'weight_decay must be >= 0, got {weight_decay}')
    nesterov = name in ('sgd', 'nesterov')
    if nesterov and momentum <= 0:
        raise UserError(
            f'opt {opt!r} uses nesterov momentum, which needs momentum > 0 '
            f'(got {momentum}); set --momentum or use --opt momentum'
        )
    if opt_betas is not None and len(opt_betas) != 2:
        raise UserError(f'opt_betas needs two values (beta1 beta2), got {list(opt_betas)}')
    b1, b2 = ADAM_BETAS if opt_betas is None else (float(opt_betas[0]), float(opt_betas[1]))
    default_eps = {'rms': optim_timm.RMSPROP_TF_EPS, 'lam': optim_timm.LAMB_EPS}.get(name[:3], ADAM_EPS)
    eps = default_eps if opt_eps is None else float(opt_eps)
    if not eps >= 0:
        raise UserError(f'opt_eps must be >= 0, got {opt_eps}')

    def decay():
        if not weight_decay:
            return optax.identity()
        return optax.add_decayed_weights(weight_decay, mask=weight_decay_mask)

    def build(learning_rate):
        if name in TIMM_OPTIMIZERS:  # these apply the lr themselves
            trust_clip, decoupled = TIMM_OPTIMIZERS[name]
            if name.startswith('rmsproptf'):
                return optim_timm.rmsprop_tf(
                    learning_rate, weight_decay_mask, weight_decay, momentum, eps, decoupled_decay=decoupled
                )
            return optim_timm.lamb(
                learning_rate,
                weight_decay_mask,
                weight_decay,
                b1,
                b2,
                eps,
                trust_clip=trust_clip,
                decoupled_decay=decoupled,
            )
        if name in ('sgd', 'nesterov', 'momentum'):
            steps = [decay(), optax.trace(decay=momentum, nesterov=nesterov)]
        elif name == 'adam':
            steps = [decay(), optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
        else:  # adamw
            steps = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps), decay()]
        return optax.chain(*steps, _scale_by_neg_lr(learning_rate))

    return optax.inject_hyperparams(build)(learning_rate=lr_schedule)


def at_step(opt_state, step):
    """A fresh optimizer state whose schedule continues from update `step` (timm's --no-resume-opt)."""
    return opt_state._replace(count=jnp.asarray(step, opt_state.count.dtype))


def current_lr(opt_state) -> jax.Array:
    """The lr used by the most recent update (before any update: the lr of update 0)."""
    return opt_state.hyperparams['learning_rate']


def create_optimizer_and_schedule(config, updates_per_epoch: int, batch_size: int):
    """(lr, schedule, num_epochs, tx) from a `config.Config`'s optimizer and schedule flags, as timm's train.py
    builds them; batch_size is the global batch per optimizer update (for --lr-base scaling)."""
    lr = resolve_lr(config.lr, config.lr_base, config.lr_base_size, config.lr_base_scale, batch_size, config.opt)
    schedule, num_epochs = create_lr_schedule(
        config.sched,
        lr,
        config.epochs,
        updates_per_epoch,
        config.warmup_epochs,
        config.warmup_lr,
        config.min_lr,
        config.sched_on_updates,
        config.decay_epochs,
        config.decay_rate,
        config.cooldown_epochs,
        config.warmup_prefix,
        config.lr_noise,
        config.lr_noise_pct,
        config.lr_noise_std,
        config.seed,
    )
    tx = create_optimizer(config.opt, schedule, config.weight_decay, config.momentum, config.opt_eps, config.opt_betas)
    return lr, schedule, num_epochs, tx
