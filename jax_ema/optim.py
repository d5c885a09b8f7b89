"""Optimizers, learning-rate schedules and lr scaling, with timm's semantics.

Mirrors timm's `train.py` + `create_optimizer_v2` + `create_scheduler_v2` (timm 1.0.x;
the losses are losses.py's):

* `resolve_lr`: `--lr` derived from `--lr-base` when `--lr` is unset.
* `create_lr_schedule` (schedule.py's, also importable from here): timm's lr schedules, per update.
* `create_optimizer`: sgd (nesterov) / momentum / adam / adamw as the torch optimizers timm
    builds, rmsproptf(w) / lamb(c)(w) as timm's own (`optim_timm`), with timm's weight-decay
    param groups (no decay for biases and ndim <= 1 leaves).
    The lr used by the last update (what timm logs) is `current_lr(opt_state)`.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from jax_ema import optim_timm, schedule as schedule_lib
from jax_ema.errors import UserError
from jax_ema.flags import optimizer as optimizer_flags
from jax_ema.schedule import SCHEDULE_NAMES, create_lr_schedule  # noqa: F401  (optim's API before schedule.py)

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

# torch.optim.Adam / AdamW defaults, used by timm when --opt-eps / --opt-betas are unset.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


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


def _scale_by_tree(scales) -> optax.GradientTransformation:
    """updates -> updates * scales, leaf by leaf (the scale cast to each update's dtype)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda g, s: g * jnp.asarray(s, g.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def create_optimizer(
    opt: str,
    lr_schedule: Callable[[jax.Array], jax.Array],
    weight_decay: float,
    momentum: float = 0.9,
    opt_eps: float | None = None,
    opt_betas: Sequence[float] | None = None,
    lr_scales=None,
) -> optax.GradientTransformation:
    """optax twin of timm `create_optimizer_v2(model, opt, lr, weight_decay, momentum, eps, betas)`.

    sgd/nesterov: torch SGD, nesterov, dampening 0; momentum: same without nesterov;
    adam: torch Adam (L2 decay added to the gradient); adamw: torch AdamW (decoupled decay,
    multiplied by lr); rmsproptf(w): timm RMSpropTF (alpha 0.9, `momentum`, w: decoupled decay);
    lamb / lambc / lambw / lambcw: timm Lamb (c: trust ratio clipped at 1, w: decoupled decay).
    eps defaults as timm's (adam 1e-8, rmsproptf 1e-10, lamb 1e-6); betas (adam, lamb) (0.9, 0.999).
    Weight decay is masked with `weight_decay_mask`. Call `update(grads, state, params)` with
    params; the state's `hyperparams['learning_rate']` is the lr of the last update
    (`current_lr`), in the params' dtype. `lr_scales` (a tree like the params, layer_decay.lr_scales): each
    leaf's update times its scale, timm's per-group lr_scale (--layer-decay).
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
        tx = build_unscaled(learning_rate)
        if lr_scales is None or name in TIMM_OPTIMIZERS:  # these scale their lr per leaf themselves
            return tx
        return optax.chain(tx, _scale_by_tree(lr_scales))

    def build_unscaled(learning_rate):
        if name in TIMM_OPTIMIZERS:  # these apply the lr themselves
            trust_clip, decoupled = TIMM_OPTIMIZERS[name]
            if name.startswith('rmsproptf'):
                return optim_timm.rmsprop_tf(
                    learning_rate,
                    weight_decay_mask,
                    weight_decay,
                    momentum,
                    eps,
                    decoupled_decay=decoupled,
                    lr_scales=lr_scales,
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
                lr_scales=lr_scales,
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


def set_lr(opt_state, lr: float):
    """The optimizer state with the lr of the coming updates set to `lr` (a tx built with a constant lr:
    the plateau schedule's), in the state's dtype and placement."""
    old = opt_state.hyperparams['learning_rate']
    new = jax.device_put(jnp.asarray(lr, old.dtype), old.sharding)
    return opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=new))


def current_lr(opt_state) -> jax.Array:
    """The lr used by the most recent update (before any update: the lr of update 0)."""
    return opt_state.hyperparams['learning_rate']


def create_optimizer_and_schedule(config, updates_per_epoch: int, batch_size: int):
    """(lr, schedule, num_epochs, tx) from a `config.Config`'s optimizer and schedule flags, as timm's train.py
    builds them; batch_size is the global batch per optimizer update (for --lr-base scaling). With
    --sched plateau the schedule is a `plateau.PlateauSchedule` and tx takes its lr from the optimizer state
    (`set_lr`), set by the trainer at each epoch start."""
    lr = resolve_lr(config.lr, config.lr_base, config.lr_base_size, config.lr_base_scale, batch_size, config.opt)
    kwargs = schedule_lib.schedule_kwargs(config)
    schedule, num_epochs = create_lr_schedule(lr=lr, updates_per_epoch=updates_per_epoch, **kwargs)
    lr_source = schedule() if config.sched == 'plateau' else schedule
    scales = None
    if config.layer_decay is not None:
        from jax_ema import layer_decay

        scales = layer_decay.model_lr_scales(config)
    eps, betas = optimizer_flags.eps_and_betas(config)  # --opt-eps / --opt-betas, or from --opt-kwargs
    tx = create_optimizer(config.opt, lr_source, config.weight_decay, config.momentum, eps, betas, scales)
    return lr, schedule, num_epochs, tx
