"""Gradient clipping as timm's dispatch_clip_grad (--clip-grad VALUE --clip-mode norm|value|agc), in the step.

norm: torch's clip_grad_norm_: every gradient times min(1, VALUE / (global L2 norm + 1e-6)).
value: torch's clip_grad_value_: each element clamped to [-VALUE, VALUE].
agc: timm's adaptive_clip_grad (NFNets) with clip factor VALUE, eps 1e-3, per output unit: a gradient whose
    unit-wise norm exceeds VALUE x max(unit-wise norm of the weight, eps) is scaled down to it. As train.py,
    the classifier (timm's last two parameters: its weight and bias) is left out under agc.
Unit-wise norms: over the whole tensor for ndim <= 1, else over every axis but the output one (flax's last,
torch's first).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

MODES = ('norm', 'value', 'agc')
HEADS = ('fc', 'classifier', 'head')  # the classifier's top-level module in this package's models
AGC_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    value: float
    mode: str = 'norm'


def of_config(config) -> ClipConfig | None:
    return None if config.clip_grad is None else ClipConfig(config.clip_grad, config.clip_mode)


def clip(cfg: ClipConfig | None, grads, params):
    """`grads` clipped as cfg says (unchanged without cfg)."""
    if cfg is None:
        return grads
    if cfg.mode == 'norm':
        squares = [
            jnp.sum(jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32)))) for g in jax.tree.leaves(grads)
        ]
        norm = jnp.sqrt(sum(squares))
        coef = jnp.minimum(cfg.value / (norm + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), grads)
    if cfg.mode == 'value':
        return jax.tree.map(lambda g: jnp.clip(g, -cfg.value, cfg.value), grads)
    return jax.tree_util.tree_map_with_path(lambda path, g, p: _agc(g, p, cfg.value, _is_head(path)), grads, params)


def _is_head(path) -> bool:
    first = path[0] if path else None
    return getattr(first, 'key', getattr(first, 'name', None)) in HEADS


def unitwise_norm(x):
    """L2 norm over the whole tensor (ndim <= 1) or per output unit (every axis but the last, kept)."""
    if x.ndim <= 1:
        return jnp.sqrt(jnp.sum(jnp.square(x)))
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1)), keepdims=True))


def _agc(grad, param, factor: float, head: bool):
    if head:
        return grad
    max_norm = jnp.maximum(unitwise_norm(param), AGC_EPS) * factor
    grad_norm = unitwise_norm(grad)
    clipped = grad * (max_norm / jnp.maximum(grad_norm, 1e-6))
    return jnp.where(grad_norm < max_norm, grad, clipped)
