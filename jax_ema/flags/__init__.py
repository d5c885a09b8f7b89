"""The trainer's flags, one module per `--help` group (as timm groups train.py's): each holds a frozen
dataclass of fields (`flag(...)`: default, help, flag names, argparse extras) and `check(config)`, the
one-line checks of its own values. `jax_ema.config.Config` is the union of the groups.

Adding a timm flag is adding one field to its group's module (and reading it where it is used).
"""

from __future__ import annotations

import argparse
import dataclasses

from jax_ema.errors import UserError

GROUPS = {  # theme -> --help section title, in timm's order
    'data': 'Dataset parameters',
    'model': 'Model parameters',
    'optimizer': 'Optimizer parameters',
    'schedule': 'Learning rate schedule parameters',
    'augment': 'Augmentation and regularization parameters',
    'ema': 'Model exponential moving average parameters',
    'precision': 'Mixed precision parameters',
    'distributed': 'Distributed parameters',
    'run': 'Miscellaneous parameters',
    'compat': 'timm options accepted with no effect here (flags/compat.py; each one given is noted at the start)',
}


def flag(group: str, default=None, help: str = '', flags: tuple = (), **argparse_kwargs):  # noqa: A002
    """A Config field that is also a command-line flag: `flags` (default: `--field-name`), its `group` (a
    GROUPS key), `help`, and what argparse needs beyond the field's type (nargs, choices, metavar, type)."""
    assert group in GROUPS, group
    return dataclasses.field(
        default=default, metadata=dict(group=group, help=help, flags=tuple(flags), argparse=argparse_kwargs)
    )


def flag_name(key: str) -> str:
    return f'--{key.replace("_", "-")}'


def decay(text: str) -> float:
    """argparse type of an EMA decay: a number in [0, 1]."""
    from jax_ema import ema

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'{value} is outside [0, 1]; use e.g. {ema.DEFAULT_DECAY}')
    return value


def positive(c, *keys: str) -> None:
    for key in keys:
        value = getattr(c, key)
        if value is not None and value <= 0:
            raise UserError(f'{flag_name(key)} must be positive, got {value}')


def non_negative(c, *keys: str) -> None:
    for key in keys:
        value = getattr(c, key)
        if value is not None and not value >= 0:  # also catches nan
            raise UserError(f'{flag_name(key)} must be >= 0, got {value}')


def below_one(c, *keys: str) -> None:
    """Each value, where set, in [0, 1)."""
    for key in keys:
        value = getattr(c, key)
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f'{flag_name(key)} must be in [0, 1), got {value}')


def parse_kwargs(tokens, option: str) -> dict:
    """timm's ParseKwargs: KEY=VALUE tokens -> {KEY: VALUE}, VALUE a Python literal where it parses as one,
    else the string itself (so `act_layer=silu` needs no quotes). The field keeps the tokens (args.yaml)."""
    import ast

    kwargs = {}
    for token in tokens or ():
        if not token:
            continue
        key, sep, text = token.partition('=')
        if not sep or not key.isidentifier():
            raise UserError(f'{option} takes KEY=VALUE items, got {token!r}; e.g. {option} key=0.5')
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs
