"""timm's own optimizers as optax transforms: `RMSpropTF` (rmsproptf / rmsproptfw) and `Lamb` (lamb / lambc /
lambw / lambcw), with the defaults `create_optimizer_v2` builds them with (timm 1.0.x).

Each transform takes the learning rate (a scalar, possibly traced) and returns the final parameter updates
(`params + updates` is timm's new parameter), because both fold the lr into their state or their decay.
`decays(params)` gives, per leaf, whether timm's param groups decay it (the other leaves get weight decay 0);
call `update(grads, state, params)` with params. State follows the params' dtype (float32 stays float32).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

RMSPROP_TF_ALPHA = 0.9  # timm registers rmsproptf / rmsproptfw with alpha 0.9
RMSPROP_TF_EPS = 1e-10  # RMSpropTF default eps, used when --opt-eps is unset
LAMB_EPS = 1e-6  # Lamb default eps
LAMB_MAX_GRAD_NORM = 1.0  # Lamb clips the global gradient norm to this before its update


def _scalar(value, like):
    return jnp.asarray(value, like.dtype)


class RMSpropTFState(NamedTuple):
    square_avg: Any  # starts at ones (torch's RMSprop starts at zeros)
    momentum_buffer: Any  # holds lr-scaled steps; None when momentum == 0


def rmsprop_tf(
    learning_rate,
    decays: Callable,
    weight_decay: float,
    momentum: float = 0.9,
    eps: float = 1e-10,
    alpha: float = RMSPROP_TF_ALPHA,
    decoupled_decay: bool = False,
    lr_scales=None,
) -> optax.GradientTransformation:
    """timm `RMSpropTF` (centered=False, lr_in_momentum=True, no caution):

    g <- g + wd p                      (coupled decay; decoupled: p <- p (1 - lr wd) first)
    s <- s + (1 - alpha) (g^2 - s)     s starts at 1
    buf <- momentum buf + lr g / sqrt(s + eps)
    p <- p - buf                       (momentum 0: p <- p - lr g / sqrt(s + eps))
    lr is each leaf's lr times its `lr_scales` leaf (timm's param group lr_scale; default 1).
    """

    def init_fn(params):
        square_avg = jax.tree.map(jnp.ones_like, params)
        buffers = jax.tree.map(jnp.zeros_like, params) if momentum > 0 else None
        return RMSpropTFState(square_avg, buffers)

    def update_fn(grads, state, params):
        leaf_wd = jax.tree.map(lambda d: weight_decay if d else 0.0, decays(params))
        buffers = state.momentum_buffer if momentum > 0 else grads  # grads: a stand-in, unused

        def leaf(g, p, s, buf, wd, scale):
            lr = _scalar(learning_rate, p) * _scalar(scale, p)
            if wd and not decoupled_decay:
                g = g + _scalar(wd, p) * p
            s = s + _scalar(1.0 - alpha, s) * (g * g - s)
            step = g / jnp.sqrt(s + _scalar(eps, s))
            if momentum > 0:
                buf = _scalar(momentum, buf) * buf + lr * step
                update = -buf
            else:
                update = -lr * step
            if wd and decoupled_decay:
                update = update - (lr * _scalar(wd, p)) * p
            return update, s, buf

        out = jax.tree.map(leaf, grads, params, state.square_avg, buffers, leaf_wd, _scales(lr_scales, params))
        updates, square_avg, new_buffers = _unzip3(grads, out)
        return updates, RMSpropTFState(square_avg, new_buffers if momentum > 0 else None)

    return optax.GradientTransformation(init_fn, update_fn)


def _scales(lr_scales, params):
    """Each leaf's lr scale (timm's param group lr_scale, --layer-decay); 1.0 without."""
    return jax.tree.map(lambda p: 1.0, params) if lr_scales is None else lr_scales


def _unzip3(like, tree_of_triples):
    """A tree (shaped like `like`) of 3-tuples -> three trees."""
    return jax.tree.transpose(jax.tree.structure(like), jax.tree.structure((0, 0, 0)), tree_of_triples)


class LambState(NamedTuple):
    count: jax.Array  # int32 updates done (one for all param groups, as timm's)
    exp_avg: Any
    exp_avg_sq: Any


def lamb(
    learning_rate,
    decays: Callable,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = LAMB_EPS,
    max_grad_norm: float | None = LAMB_MAX_GRAD_NORM,
    trust_clip: bool = False,
    decoupled_decay: bool = False,
    lr_scales=None,
) -> optax.GradientTransformation:
    """timm `Lamb` (bias_correction, grad_averaging, always_adapt=False, no caution):

    g <- g / max(1, ||all grads|| / max_grad_norm)
    m <- m + (1 - b1) (g - m);  v <- b2 v + (1 - b2) g^2
    u <- (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
    decayed leaves: u <- u + wd p (decoupled: p <- p (1 - lr wd) instead), then u <- u * ||p|| / ||u||
        (1 where either norm is 0; trust_clip caps the ratio at 1); other leaves are not adapted
    p <- p - lr u
    lr is each leaf's lr times its `lr_scales` leaf (timm's param group lr_scale; default 1).
    """

    def init_fn(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return LambState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def update_fn(grads, state, params):
        mask = decays(params)
        count = state.count + 1
        if max_grad_norm is not None:
            global_norm = optax.tree.norm(grads)
            clip = jnp.maximum(global_norm / max_grad_norm, 1.0)
            grads = jax.tree.map(lambda g: g / clip.astype(g.dtype), grads)

        def leaf(g, p, m, v, decayed, scale):
            t = count.astype(p.dtype)
            bc1 = 1.0 - _scalar(b1, p) ** t
            bc2 = 1.0 - _scalar(b2, p) ** t
            m = m + _scalar(1.0 - b1, m) * (g - m)
            v = _scalar(b2, v) * v + _scalar(1.0 - b2, v) * (g * g)
            u = (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + _scalar(eps, v))
            lr = _scalar(learning_rate, p) * _scalar(scale, p)
            new_p = p
            if decayed and weight_decay:
                if decoupled_decay:
                    new_p = p - (lr * _scalar(weight_decay, p)) * p
                else:
                    u = u + _scalar(weight_decay, p) * p
                w_norm, u_norm = jnp.linalg.norm(new_p.ravel()), jnp.linalg.norm(u.ravel())
                ratio = jnp.where((w_norm > 0) & (u_norm > 0), w_norm / jnp.where(u_norm > 0, u_norm, 1), 1)
                if trust_clip:
                    ratio = jnp.minimum(ratio, 1)
                u = u * ratio
            return (new_p - p) - lr * u, m, v

        out = jax.tree.map(leaf, grads, params, state.exp_avg, state.exp_avg_sq, mask, _scales(lr_scales, params))
        updates, exp_avg, exp_avg_sq = _unzip3(grads, out)
        return updates, LambState(count, exp_avg, exp_avg_sq)

    return optax.GradientTransformation(init_fn, update_fn)
