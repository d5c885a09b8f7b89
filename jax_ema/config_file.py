"""`-c/--config FILE.yaml` as timm's train.py: the file's keys (argparse dests, as timm's args.yaml writes
them) set the defaults and the command line overrides them.

timm hands the file to `parser.set_defaults`, so any key is accepted. Here each key is one of:
  * a flag of ours: the file's value, unless the command line gives that flag (DATA and --data-dir count as
    one); values pass through the flag's own type and checks (a timm args.yaml writes '' or null for unset);
  * a timm option not built here (timm_args.py, read from timm's train.py): accepted when its value is timm's
    default, refused in one line otherwise (it would change the run);
  * neither: accepted and ignored, as timm's parser ignores it (listed in one line at the start).
A run's own RUN/args.yaml (every Config field) and a timm run's args.yaml both work.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from jax_ema import timm_args
from jax_ema.errors import UserError

log = logging.getLogger('jax_ema.train')
_DATA_KEYS = ('data', 'data_dir')
_EXTRA_DECAYS = 'model_ema_extra_decays'  # our args.yaml: --model-ema-decay D0 D1 ... is written as two fields


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the -c/--config file or None, the other arguments)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument('-c', '--config', default=None)
    known, rest = p.parse_known_args(argv)
    return known.config, rest


def read(path: str) -> dict:
    """The YAML mapping of `path`, or one line saying what is wrong with it."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f'--config {path!r}: cannot read it ({e.strerror}); give a YAML file') from None
    except yaml.YAMLError as e:
        where = getattr(e, 'problem_mark', None)
        line = f' (line {where.line + 1})' if where is not None else ''
        raise UserError(f'--config {path!r} is not valid YAML{line}; fix it or give another file') from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f'--config {path!r} holds a {type(values).__name__}, not key: value lines')
    return values


def _same(a, b) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple | list) else v  # noqa: E731
    return norm(a) == norm(b)


def config_argv(parser: argparse.ArgumentParser, path: str, values: dict, argv: list[str]) -> list[str]:
    """The command-line arguments that the file's `values` stand for, to go after `argv`: keys of ours that
    `argv` does not give (the command line wins); refuses a timm option not built here whose value is not
    timm's default."""
    actions = {a.dest: a for a in parser._actions if a.option_strings or a.dest == 'data'}
    given = set(vars(parser.parse_args(argv)))  # the parser's defaults are SUPPRESS: only what argv gives
    if given & set(_DATA_KEYS):  # DATA and --data-dir are one setting
        given |= set(_DATA_KEYS)
    tokens, ignored = [], []
    for key, value in values.items():
        key = str(key).replace('-', '_')
        if key == 'config' or key in given:
            continue
        if key == _EXTRA_DECAYS:
            continue  # with model_ema_decay below
        if key == 'device' and value == timm_args.DEFAULTS['device']:
            continue  # timm's default 'cuda' is in every timm args.yaml: here JAX's default device
        if key in actions:
            tokens += _tokens(actions[key], key, value, values.get(_EXTRA_DECAYS))
        elif key in timm_args.DEFAULTS:
            if not _same(value, timm_args.DEFAULTS[key]):
                flag = next(o['names'][-1] for o in timm_args.OPTIONS if o['dest'] == key)
                raise UserError(
                    f"--config {path!r}: {key}: {value!r} (timm's {flag}) is not built here; remove it or set "
                    f"it to timm's default {timm_args.DEFAULTS[key]!r}"
                )
        else:
            ignored.append(key)
    if ignored:
        log.info('--config %s: ignored keys that neither timm nor jax_ema knows: %s', path, ', '.join(ignored))
    return tokens


def _tokens(action: argparse.Action, key: str, value, extra_decays=None) -> list[str]:
    """The arguments that set `action` to the file's `value` (none for an unset value: the default stays)."""
    if value is None or (isinstance(value, str | list) and not value):  # timm's "unset" ('', null, [])
        return []
    if key in _DATA_KEYS:
        return ['--data-dir', str(value)]
    if isinstance(value, dict):  # timm's ParseKwargs options (model_kwargs, opt_kwargs): KEY=VALUE items
        return [action.option_strings[0], *(f'{k}={v}' for k, v in value.items())] if value else []
    option = next((o for o in action.option_strings if o.startswith('--')), action.option_strings[0])
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise UserError(f'--config: {key}: {value!r} must be true or false')
        return [option] if value else []
    values = list(value) if isinstance(value, list | tuple) else [value]
    if key == 'model_ema_decay' and extra_decays:
        values += list(extra_decays)
    return [option, *(str(v) for v in values)]
