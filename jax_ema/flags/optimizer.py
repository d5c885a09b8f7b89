"""Optimizer parameters (optim.py builds timm's optimizers from them)."""

from __future__ import annotations

import dataclasses

from jax_ema.clip_grad import MODES
from jax_ema.flags import flag, non_negative, positive


@dataclasses.dataclass(frozen=True)
class OptimizerFlags:
    opt: str = flag('optimizer', 'sgd')
    opt_eps: float | None = flag('optimizer', None)
    opt_betas: tuple | None = flag('optimizer', None, nargs='+', type=float)
    momentum: float = flag('optimizer', 0.9)
    weight_decay: float | None = flag('optimizer', None)
    layer_decay: float | None = flag(
        'optimizer',
        None,
        'layer-wise lr decay: the lr of layer group i of n scaled by layer_decay ** (n - 1 - i), the groups '
        "of timm's group_matcher (stem, each block, head)",
    )
    layer_decay_min_scale: float = flag('optimizer', 0.0, 'layer-wise lr decay: the least lr scale')
    layer_decay_no_opt_scale: float | None = flag(
        'optimizer', None, 'layer-wise lr decay: the layers scaled below this are not trained'
    )
    clip_grad: float | None = flag(
        'optimizer', None, 'clip the gradients (clip_grad.py; default: no clipping)', metavar='NORM'
    )
    clip_mode: str = flag('optimizer', 'norm', 'what --clip-grad clips', choices=MODES)


def check(c) -> None:
    non_negative(c, 'weight_decay', 'momentum', 'layer_decay_min_scale', 'layer_decay_no_opt_scale', 'clip_grad')
    positive(c, 'layer_decay')
