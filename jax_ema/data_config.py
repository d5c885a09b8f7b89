"""A run's data config, as timm's `resolve_data_config(vars(args), model=model)` makes it in train.py.

The model's pretrained config (pretrained_cfgs.py; `--model NAME.TAG` picks a tag, `--model NAME` the
default one) gives input size, interpolation, mean, std and crop_pct, unless `--input-size` / `--img-size`,
`--interpolation`, `--mean`, `--std`, `--crop-pct` set them; a model without a config gets timm's
defaults (224 px, bicubic, ImageNet mean/std, 0.875). This holds whether or not `--pretrained` is given,
as in timm. Only square RGB inputs; the centre crop (validate's --crop-mode also takes squash and border).
"""

from __future__ import annotations

import math

from jax_ema import pretrained_cfgs
from jax_ema.errors import UserError

INTERPOLATIONS = ('bilinear', 'bicubic', 'lanczos', 'box')  # the resizes of data/transforms.py (its KERNELS)
KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')  # timm's, in its order
_TIMM_DEFAULTS = dict(
    input_size=(3, 224, 224),
    interpolation='bicubic',
    mean=pretrained_cfgs.IMAGENET[0],
    std=pretrained_cfgs.IMAGENET[1],
    crop_pct=0.875,
    crop_mode=pretrained_cfgs.CROP_MODE,
)


def model_pretrained_cfg(model: str) -> pretrained_cfgs.PretrainedCfg | None:
    """The table's row for `model` ('arch' or 'arch.tag'); an unknown tag of a known architecture is an error
    (an unknown architecture is create_model's)."""
    architecture, tag = pretrained_cfgs.split_model_name(model)
    row = pretrained_cfgs.lookup(model)
    if row is None and tag and architecture in pretrained_cfgs.DEFAULT_TAGS:
        raise UserError(
            f'--model {model}: {architecture} has no pretrained tag {tag!r}; known tags: '
            f'{", ".join(pretrained_cfgs.tags(architecture))}'
        )
    return row


def _channels(values, flag: str) -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3  # timm repeats a single value for every channel
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UserError(f'{flag} takes 1 or 3 finite numbers (one per RGB channel), got {list(values)}')
    return values


def resolve_data_config(
    model: str,
    img_size: int | None = None,
    input_size=None,
    crop_pct: float | None = None,
    mean=None,
    std=None,
    interpolation: str | None = None,
    use_test_size: bool = False,
) -> dict:
    """timm's data config dict (KEYS) for `model` with these overrides (None or '' = the model's value);
    `use_test_size`: the model's test_input_size / test_crop_pct where it has them (timm's validate.py)."""
    row = model_pretrained_cfg(model)
    base = _TIMM_DEFAULTS if row is None else dict(_TIMM_DEFAULTS, **{k: getattr(row, k) for k in KEYS[:-1]})
    if use_test_size and row is not None:  # timm: the test size and the test crop_pct each where set
        base.update(
            input_size=row.test_input_size or base['input_size'], crop_pct=row.test_crop_pct or base['crop_pct']
        )
    if input_size is not None:  # timm: --input-size wins over --img-size
        input_size = tuple(input_size)
        if len(input_size) != 3 or input_size[0] != 3 or input_size[1] != input_size[2] or input_size[1] < 1:
            raise UserError(
                f'--input-size {" ".join(map(str, input_size))}: jax_ema trains square RGB images; '
                'give --input-size 3 N N (or --img-size N)'
            )
    elif img_size is not None:
        input_size = (3, img_size, img_size)
    config = dict(
        input_size=tuple(input_size or base['input_size']),
        interpolation=interpolation or base['interpolation'],
        mean=_channels(base['mean'] if mean is None else mean, '--mean'),
        std=_channels(base['std'] if std is None else std, '--std'),
        crop_pct=crop_pct or base['crop_pct'],
        crop_mode=base['crop_mode'],
    )
    if config['interpolation'] not in INTERPOLATIONS:
        raise UserError(
            f'--interpolation {config["interpolation"]!r} is not supported; use one of {", ".join(INTERPOLATIONS)}'
        )
    if not all(s > 0 for s in config['std']):
        raise UserError(f'--std must be > 0 for every channel, got {list(config["std"])}')
    if not 0 < config['crop_pct'] <= 1:
        raise UserError(f'--crop-pct must be in (0, 1], got {config["crop_pct"]}')
    return config


def of_config(config) -> dict:
    """The data config of a resolved `Config` (its img_size, interpolation, mean, std and crop_pct)."""
    chans = config.in_chans or 3  # timm's input_size (in_chans, H, W); one mean / std value per channel
    return dict(
        input_size=(chans, config.img_size, config.img_size),
        interpolation=config.interpolation,
        mean=tuple(config.mean)[:chans],
        std=tuple(config.std)[:chans],
        crop_pct=config.crop_pct,
        crop_mode=pretrained_cfgs.CROP_MODE,
    )


def config_fields(data_config: dict) -> dict:
    """The `Config` fields that hold `data_config` (what args.yaml records)."""
    return dict(
        img_size=data_config['input_size'][-1],
        interpolation=data_config['interpolation'],
        mean=tuple(data_config['mean']),
        std=tuple(data_config['std']),
        crop_pct=data_config['crop_pct'],
    )


def describe(model: str, data_config: dict) -> str:
    """One line for the log, with timm's names."""
    return f'Data config for {model}: ' + ', '.join(f'{k} {data_config[k]}' for k in KEYS)


def to_json(data_config: dict) -> dict:
    """The dict with lists for tuples (checkpoint metadata, safetensors metadata)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
