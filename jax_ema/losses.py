"""The training losses as timm's train.py picks them, and their formulas (timm.loss).

    --jsd-loss: not built | mixup or cutmix on: BCE (--bce-loss) or soft-target CE, smoothing already in the
    targets | --smoothing > 0: BCE with smoothing (--bce-loss) or label-smoothing CE | else plain CE.

(timm's quirk kept: --bce-loss with --smoothing 0 and no mixup trains with plain cross entropy.)
Each loss is a mean over the batch, in float32 at least (float64 for float64 logits).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_ema.errors import UserError


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """kind: 'ce' (label smoothing `smoothing`; 0: plain), 'soft_ce' or 'bce' (`smoothing` applied to integer
    labels only; soft targets come smoothed), with BCE's `target_thresh`, `sum_classes`, `pos_weight`."""

    kind: str = 'ce'
    smoothing: float = 0.0
    target_thresh: float | None = None
    sum_classes: bool = False
    pos_weight: float | None = None


def of_config(config) -> LossConfig:
    """timm train.py's choice of train_loss_fn for a `config.Config`."""
    mixup_active = config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None
    bce = dict(target_thresh=config.bce_target_thresh, sum_classes=config.bce_sum, pos_weight=config.bce_pos_weight)
    if mixup_active:
        return LossConfig('bce', **bce) if config.bce_loss else LossConfig('soft_ce')
    if config.smoothing:
        return LossConfig('bce', config.smoothing, **bce) if config.bce_loss else LossConfig('ce', config.smoothing)
    return LossConfig('ce')


def loss(cfg: LossConfig, logits, labels=None, targets=None):
    """The loss of `cfg` on integer `labels` or soft `targets` [n, classes]."""
    if cfg.kind == 'ce':
        return cross_entropy(logits, labels, cfg.smoothing)
    if targets is None:
        targets = smoothed_one_hot(labels, logits.shape[-1], cfg.smoothing, logits.dtype)
    if cfg.kind == 'soft_ce':
        return soft_target_cross_entropy(logits, targets)
    return binary_cross_entropy(logits, targets, cfg.target_thresh, cfg.sum_classes, cfg.pos_weight)


def _upcast(logits):
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Mean cross entropy with timm's label smoothing (LabelSmoothingCrossEntropy).

    loss_i = (1 - s) * nll_i + s * mean_c(-log p_ic); s == 0 is plain cross entropy.
    """
    if not 0.0 <= smoothing < 1.0:
        raise UserError(f'smoothing must be in [0, 1), got {smoothing}')
    logprobs = jax.nn.log_softmax(_upcast(logits), axis=-1)
    nll = -jnp.take_along_axis(logprobs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    if smoothing == 0.0:
        return nll.mean()
    smooth = -logprobs.mean(axis=-1)
    return ((1.0 - smoothing) * nll + smoothing * smooth).mean()


def smoothed_one_hot(labels, num_classes: int, smoothing: float, dtype=jnp.float32):
    """timm's one-hot targets with smoothing: off = s / C, on = 1 - s + off."""
    off = smoothing / num_classes
    return jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), 1.0 - smoothing + off, off).astype(dtype)


def soft_target_cross_entropy(logits, targets):
    """timm's SoftTargetCrossEntropy: mean_i sum_c -t_ic log p_ic."""
    return jnp.sum(-targets * jax.nn.log_softmax(_upcast(logits), axis=-1), axis=-1).mean()


def binary_cross_entropy(logits, targets, target_thresh=None, sum_classes=False, pos_weight=None):
    """timm's BinaryCrossEntropy on dense targets: torch's binary_cross_entropy_with_logits, targets first
    binarised (t > thresh) where `target_thresh` is set; the mean over all elements, or with `sum_classes`
    the sum over classes then the mean over the batch. `pos_weight` weighs the positive term."""
    x = _upcast(logits)
    if target_thresh is not None:
        targets = (targets > target_thresh).astype(targets.dtype)
    # torch: (1 - t) x + (1 + (w - 1) t) (log1p(exp(-|x|)) + max(-x, 0))
    softplus_neg = jnp.log1p(jnp.exp(-jnp.abs(x))) + jnp.maximum(-x, 0)
    weight = 1.0 if pos_weight is None else 1.0 + (pos_weight - 1.0) * targets
    per_element = (1.0 - targets) * x + weight * softplus_neg
    return per_element.sum(-1).mean() if sum_classes else per_element.mean()
