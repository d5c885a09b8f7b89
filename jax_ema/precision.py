"""Mixed precision as timm's `--amp`, `--amp-dtype` and `--model-dtype`.

  --amp                      params float32, compute in --amp-dtype (bfloat16 by default here; timm's
                             default is float16). float16 adds dynamic loss scaling as torch's GradScaler.
  --model-dtype bfloat16     params stored in bfloat16 and computed in bfloat16 (timm: `model.to(dtype)`).

Whatever the model's dtypes, the optimizer state, the BatchNorm running statistics and the EMA stay
float32: `fp32_optimizer` runs the optimizer on float32 copies of bfloat16 params and gradients (its
moments are float32; the new params are rounded to bfloat16 once per update, so, as in timm, an update
below half a bfloat16 ulp of a weight is lost — use --amp to keep float32 weights), and `ema.init`
keeps the EMA as a float32 FlatTree fed from the bfloat16 params.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jax_ema import optim
from jax_ema.errors import UserError

AMP_DTYPES = ('bfloat16', 'float16')
MODEL_DTYPES = ('float32', 'bfloat16')


def resolve(amp: bool, amp_dtype: str = 'bfloat16', model_dtype: str | None = None):
    """(compute dtype, param dtype, loss scaling on?) for the flags; bad combinations raise UserError."""
    if amp_dtype not in AMP_DTYPES:
        raise UserError(f'--amp-dtype {amp_dtype!r} is not supported; use one of {", ".join(AMP_DTYPES)}')
    model_dtype = model_dtype or 'float32'
    if model_dtype == 'float16':
        raise UserError(
            '--model-dtype float16 trains without loss scaling and underflows; use --model-dtype '
            'bfloat16, or --amp --amp-dtype float16 (float32 weights, loss scaling)'
        )
    if model_dtype not in MODEL_DTYPES:
        raise UserError(f'--model-dtype {model_dtype!r} is not supported; use one of {", ".join(MODEL_DTYPES)}')
    if amp and model_dtype != 'float32':
        raise UserError(
            f'--amp needs float32 weights (as in timm) but --model-dtype is {model_dtype}; '
            'give one of --amp and --model-dtype'
        )
    if amp:
        return jnp.dtype(amp_dtype), jnp.dtype(jnp.float32), amp_dtype == 'float16'
    return jnp.dtype(model_dtype), jnp.dtype(model_dtype), False


def cast_params(variables: dict, param_dtype) -> dict:
    """`variables` with the floating params in `param_dtype`; BatchNorm statistics stay as they are."""
    params = jax.tree.map(
        lambda x: x.astype(param_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, variables['params']
    )
    return dict(variables, params=params)


def _to_fp32(tree):
    """Floating leaves narrower than float32 as float32; others (float32, float64, ints) unchanged."""

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32)) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def fp32_optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` run on float32 copies of the params and gradients: its state is float32 for bfloat16 params.

    The state has `tx`'s own structure (so `optim.at_step` and `optim.current_lr` work unchanged) and no
    master copy of the weights: the float32 updates are added to the bfloat16 params and the sum is
    rounded to bfloat16 by `optax.apply_updates`, one rounding per update, as timm's bfloat16 model.
    """

    def init(params):
        return tx.init(_to_fp32(params))

    def update(grads, state, params=None):
        return tx.update(_to_fp32(grads), state, None if params is None else _to_fp32(params))

    return optax.GradientTransformation(init, update)


def finite_flag(tree) -> jax.Array:
    """One traced boolean (usable inside jit): every floating leaf of `tree` is free of NaN and Inf."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


class LossScale(flax.struct.PyTreeNode):
    """torch.cuda.amp.GradScaler's dynamic loss scale, held in the TrainState.

    The loss is multiplied by `scale` before differentiation and the gradients divided by it after.
    Non-finite gradients: the update is skipped, scale *= backoff, the finite-step count restarts.
    Otherwise the count goes up, and at `growth_interval` finite steps in a row scale *= growth.
    """

    scale: jax.Array
    growth_tracker: jax.Array
    growth_factor: float = flax.struct.field(pytree_node=False, default=2.0)
    backoff_factor: float = flax.struct.field(pytree_node=False, default=0.5)
    growth_interval: int = flax.struct.field(pytree_node=False, default=2000)

    @classmethod
    def create(cls, init_scale: float = 2.0**16, **kwargs) -> LossScale:
        return cls(scale=jnp.array(init_scale, jnp.float32), growth_tracker=jnp.array(0, jnp.int32), **kwargs)

    def scale_loss(self, loss):
        return loss * self.scale.astype(loss.dtype)

    def unscale(self, loss, grads):
        """(loss, grads) divided by the scale, and whether all those gradients are finite."""
        inv = (1.0 / self.scale).astype(jnp.float32)  # exact: the scale is a power of two
        grads = jax.tree.map(lambda g: g * inv.astype(g.dtype), grads)
        return loss * inv.astype(loss.dtype), grads, finite_flag(grads)

    def adjust(self, finite) -> LossScale:
        """The scale for the next step (torch's `_amp_update_scale_`)."""
        count = self.growth_tracker + 1
        grow = finite & (count >= self.growth_interval)
        grown = self.scale * self.growth_factor
        scale = jnp.where(
            finite, jnp.where(grow & jnp.isfinite(grown), grown, self.scale), self.scale * self.backoff_factor
        )
        tracker = jnp.where(finite & ~grow, count, 0).astype(self.growth_tracker.dtype)
        return self.replace(scale=scale.astype(self.scale.dtype), growth_tracker=tracker)


def skip_if_not_finite(finite, new: Any, old: Any) -> Any:
    """The TrainState after a loss-scaled step: `new` if its gradients were finite; otherwise `old`'s
    params, optimizer state and EMA (the update and the EMA update are skipped) with `new`'s step.
    As in timm, the lr schedule follows the step (timm steps its scheduler by update count) and the
    forward's BatchNorm statistics are kept (when finite). The loss scale is adjusted."""

    def pick(flag, a, b):
        return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)

    skipped_opt = optim.at_step(old.opt_state, new.opt_state.count)
    return new.replace(
        params=pick(finite, new.params, old.params),
        opt_state=pick(finite, new.opt_state, skipped_opt),
        ema_params=pick(finite, new.ema_params, old.ema_params),
        ema_batch_stats=pick(finite, new.ema_batch_stats, old.ema_batch_stats),
        batch_stats=pick(finite_flag(new.batch_stats), new.batch_stats, old.batch_stats),
        loss_scale=old.loss_scale.adjust(finite),
    )
