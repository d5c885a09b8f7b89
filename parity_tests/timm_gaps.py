"""What the installed timm lacks of what jax_ema follows (timm 1.0.31), measured on timm itself, so a parity
test skips a comparison there with the reason instead of failing on a feature timm does not have.

The GPU image of issue 15 has timm 1.0.29, which has no 'constant' schedule (its factory returns no
scheduler for the name), no 'rmsproptfw' optimizer, draws its lr noise without `noise_std` (a bug later
timm fixed; ours applies it), and lacks some pretrained tags of our table. Each function returns the
reason (a string) where the installed timm has the gap, None where it does not.
"""

from __future__ import annotations

import functools

import timm
import torch
from timm.optim import list_optimizers
from timm.scheduler import create_scheduler_v2


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@functools.cache
def schedule(name: str) -> str | None:
    """Why timm's `--sched name` cannot be compared here (it gives no scheduler), or None."""
    if name == 'none':
        return None
    scheduler, _ = create_scheduler_v2(_optimizer(), sched=name, num_epochs=4, warmup_epochs=1)
    if scheduler is None:
        return f'timm {timm.__version__} has no {name!r} schedule (create_scheduler_v2 gives no scheduler for it)'
    return None


@functools.cache
def noise_std() -> str | None:
    """Why timm's lr noise cannot be compared with a noise_std other than 1 here, or None."""
    draws = []
    for std in (1.0, 2.0):
        scheduler, _ = create_scheduler_v2(
            _optimizer(), sched='step', num_epochs=4, decay_rate=1.0, noise=(0.0, 1.0), noise_pct=1e9, noise_std=std
        )
        draws.append(scheduler._calculate_noise(3))  # pylint: disable=protected-access
    if draws[0] == draws[1]:
        return f'timm {timm.__version__} draws its lr noise without noise_std (later timm applies it, as ours does)'
    return None


@functools.cache
def optimizer(name: str) -> str | None:
    """Why timm's `--opt name` cannot be compared here (not in its registry), or None."""
    if name.lower() not in list_optimizers():
        return f'timm {timm.__version__} has no optimizer {name!r} in its registry'
    return None


def pretrained_tags(names) -> tuple[list[str], str | None]:
    """(the names timm knows among `names`, why the others cannot be compared or None). Architecture names
    (no '.') count as known."""
    known = set(timm.list_pretrained())
    unknown = sorted(n for n in names if '.' in n and n not in known)
    kept = [n for n in names if n not in unknown]
    if not unknown:
        return kept, None
    shown = ', '.join(unknown[:4]) + (', ...' if len(unknown) > 4 else '')
    return kept, f"timm {timm.__version__} has no pretrained config for {len(unknown)} of our table's tags ({shown})"
