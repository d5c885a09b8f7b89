"""Optimizer parameters (optim.py builds timm's optimizers from them)."""

from __future__ import annotations

import dataclasses

from jax_ema.clip_grad import MODES
from jax_ema.errors import UserError
from jax_ema.flags import flag, non_negative, parse_kwargs, positive

# --opt-kwargs keys of our optimizers, and the flag each stands for (timm passes them on to the optimizer)
OPT_KWARGS = {'eps': 'opt_eps', 'betas': 'opt_betas'}


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
    opt_kwargs: tuple = flag(
        'optimizer',
        (),
        'more optimizer arguments (timm passes them to create_optimizer_v2): eps=, betas=(b1, b2)',
        nargs='*',
        metavar='KEY=VALUE',
    )


def check(c) -> None:
    non_negative(c, 'weight_decay', 'momentum', 'layer_decay_min_scale', 'layer_decay_no_opt_scale', 'clip_grad')
    positive(c, 'layer_decay')
    eps_and_betas(c)


def eps_and_betas(c) -> tuple:
    """(eps, betas): --opt-eps / --opt-betas, or the same from --opt-kwargs. Other keys are refused: a key
    that has its own flag (timm fails on it twice too), or one our optimizers do not have."""
    kwargs = parse_kwargs(c.opt_kwargs, '--opt-kwargs')
    for key, value in kwargs.items():
        field = OPT_KWARGS.get(key)
        if field is None:
            raise UserError(f'--opt-kwargs {key}=... is not an option of these optimizers; known: eps, betas')
        if getattr(c, field) is not None:
            raise UserError(f'--opt-kwargs {key}=... is also set by --{field.replace("_", "-")}; give one of them')
        if key == 'betas' and not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise UserError(f'--opt-kwargs betas= needs two numbers, e.g. betas=(0.9,0.999); got {value!r}')
        if key == 'eps' and not isinstance(value, (int, float)):
            raise UserError(f'--opt-kwargs eps= needs a number, e.g. eps=1e-6; got {value!r}')
    return kwargs.get('eps', c.opt_eps), kwargs.get('betas', c.opt_betas)
