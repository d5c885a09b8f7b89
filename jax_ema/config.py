"""Training configuration: one frozen dataclass, `Config`, whose fields are timm's `train.py` flags.

Its fields are declared by group in `jax_ema/flags/` (data, model, optimizer, schedule, augment, ema,
precision, distributed, run, compat), each field the single source of its flag: default, help text, flag names
(`flags.flag`). `build_parser()` generates the command line from the fields, grouped in `--help` as timm
groups them, and `parse_args(argv)` turns a command line into a `Config`. Constructing a `Config` (from
the CLI or the library API) checks it (`Config.__post_init__`: each group's `check`, then the checks across
groups) and fills the defaults that depend on the data: timm's for a DATA folder (`TIMM_DEFAULTS`), small
ones for the embedded digits (`DIGITS_DEFAULTS`), since timm's 300 epochs at 224 px would run for days on a
CPU. Then it resolves the data config once (data_config.py): image size, interpolation, mean/std and
crop_pct are the model's pretrained config, as timm's `resolve_data_config`, unless a flag sets them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from jax_ema import config_file, data_config
from jax_ema.cli import ArgumentParser
from jax_ema.device_input import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from jax_ema.errors import UserError
from jax_ema.flags import (
    GROUPS,
    augment,
    compat,
    data,
    decay,
    distributed,
    ema,
    flag_name,
    model,
    optimizer,
    precision as precision_flags,
    run,
    schedule,
)

# The defaults that depend on the data, filled where a field is left None.
# (With DATA the image size, interpolation, mean/std and crop_pct are the model's: data_config.py.)
TIMM_DEFAULTS = dict(
    epochs=300,
    batch_size=128,
    lr=None,
    warmup_epochs=5,
    weight_decay=2e-5,
    scale=(0.08, 1.0),
    hflip=0.5,
    color_jitter=(0.4,),
    train_interpolation='random',
)
DIGITS_DEFAULTS = dict(
    epochs=10,
    img_size=32,
    batch_size=64,
    lr=0.1,
    warmup_epochs=1,
    weight_decay=5e-4,
    scale=(0.6, 1.0),
    hflip=0.0,
    color_jitter=(0.0,),  # the digits keep their plain augmentation: no jitter, the data config's filter
    train_interpolation='',
    crop_pct=1.0,  # the embedded digits: 1,437 images of 8x8 px
    interpolation='bilinear',
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
)  # any model

_CHECKS = (
    data.check,
    model.check,
    optimizer.check,
    schedule.check,
    augment.check,
    ema.check,
    distributed.check,
    run.check,
    compat.check,
)


@dataclasses.dataclass(frozen=True)
class Config(
    compat.CompatFlags,
    run.RunFlags,
    distributed.DistributedFlags,
    precision_flags.PrecisionFlags,
    ema.EmaFlags,
    augment.AugmentFlags,
    schedule.ScheduleFlags,
    optimizer.OptimizerFlags,
    model.ModelFlags,
    data.DataFlags,
):
    """Every flag of the trainer (fields declared by group in jax_ema/flags/), checked and with the
    data-dependent defaults filled."""

    def __post_init__(self):
        for key, value in _data_defaults(self).items():
            object.__setattr__(self, key, value)
        for key, value in _resolve_data_config(self).items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, 'class_map', data.class_map_path(self.class_map))  # args.yaml: from anywhere
        for check in _CHECKS:
            check(self)

    @property
    def data_config(self) -> dict:
        """The run's data config with timm's keys (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
        return data_config.of_config(self)


def _data_defaults(config: Config) -> dict:
    """The data-dependent defaults of the fields left None: timm's for a DATA folder, DIGITS_DEFAULTS without."""
    digits = config.data is None and not data.tfds_name(config.dataset)
    base = DIGITS_DEFAULTS if digits else TIMM_DEFAULTS
    fill = {k: v for k, v in base.items() if getattr(config, k) is None}
    if digits and config.lr_base != Config.lr_base and config.lr is None:
        fill.pop('lr')  # the user asked for lr scaling from --lr-base
    return fill


def _resolve_data_config(config: Config) -> dict:
    """The data config's fields, resolved once as timm's resolve_data_config (--input-size folded into
    --img-size), and --pretrained implied by --pretrained-path."""
    resolved = data_config.resolve_data_config(
        config.model, config.img_size, config.input_size, config.crop_pct, config.mean, config.std, config.interpolation
    )
    return dict(
        data_config.config_fields(resolved),
        input_size=None,
        pretrained=config.pretrained or bool(config.pretrained_path),
    )


def _help(field: dataclasses.Field) -> str:
    """The field's help text and its default (the data-dependent ones: timm's, and the digits')."""
    text = field.metadata['help']
    if field.name in TIMM_DEFAULTS and TIMM_DEFAULTS[field.name] is not None:
        timm, digits = (_shown(d[field.name]) for d in (TIMM_DEFAULTS, DIGITS_DEFAULTS))
        default = f"default: timm's {timm}; {digits} without DATA"
    elif field.default not in (None, False, '', ()):
        default = f'default: {field.default}'
    else:
        return text or None
    return f'{text} ({default})' if text else default


def _shown(value) -> str:
    """A default as --help shows it: a one-value tuple as its value, '' quoted."""
    if isinstance(value, tuple) and len(value) == 1:
        return str(value[0])
    return "''" if value == '' else str(value)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line, generated from Config's fields (absent flags keep the fields' defaults)."""
    p = ArgumentParser(
        prog='python -m jax_ema.train',
        description='timm-style image classification training with an EMA, in JAX. -c/--config FILE.yaml: '
        "defaults from a YAML file (a timm args.yaml, or a run's), overridden by the command line.",
        argument_default=argparse.SUPPRESS,
    )
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if 'group' not in field.metadata:
            continue
        kwargs = dict(field.metadata['argparse'], help=_help(field))
        kind = hints[field.name]
        kind = next(a for a in typing.get_args(kind) if a is not type(None)) if typing.get_args(kind) else kind
        if kind is bool:
            kwargs['action'] = 'store_true'
        elif kind is not tuple:
            kwargs.setdefault('type', kind)
        names = field.metadata['flags'] or (flag_name(field.name),)
        if names[0].startswith('-'):
            kwargs['dest'] = field.name
        groups[field.metadata['group']].add_argument(*names, **kwargs)
        if field.name == 'data':
            groups['data'].add_argument('--data-dir', dest='data_dir', help='same as DATA')
        if field.name == 'model_ema_decay':
            groups['ema'].add_argument(
                '--ema-decay',
                type=decay,
                nargs='+',
                metavar='D',
                help='shorthand for --model-ema --model-ema-decay D [D ...]',
            )
    return p


def parse_args(argv=None) -> Config:
    """Command line -> Config (checked, defaults filled); bad flags raise UserError with one line.
    `-c/--config FILE.yaml` sets defaults that the command line overrides, as timm (config_file.py)."""
    import sys

    parser = build_parser()
    path, argv = config_file.split_config(list(sys.argv[1:] if argv is None else argv))
    if path:
        argv = argv + config_file.config_argv(parser, path, config_file.read(path), argv)  # keys not in argv
    args = vars(parser.parse_args(argv))
    data_dir = args.pop('data_dir', None)
    if args.get('data') and data_dir and args['data'] != data_dir:
        raise UserError(f'DATA {args["data"]!r} and --data-dir {data_dir!r} differ; give one of them')
    if data_dir:
        args['data'] = args.get('data') or data_dir
    ema_decay = args.pop('ema_decay', None)
    if ema_decay is not None:
        args['model_ema'], args['model_ema_decay'] = True, ema_decay
    if 'model_ema_decay' in args:  # D0 [D1 ...]: the first, and the extra EMAs
        args['model_ema_decay'], args['model_ema_extra_decays'] = (
            args['model_ema_decay'][0],
            tuple(args['model_ema_decay'][1:]),
        )
    for key, value in args.items():
        if isinstance(value, list):
            args[key] = tuple(value)
    return Config(**args)
