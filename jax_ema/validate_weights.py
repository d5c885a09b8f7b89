"""What validate evaluates: the weights (one of our checkpoints, a timm file, or a model's pretrained weights
from the hub) and the data settings it takes from a training run.

The evaluation data config follows timm's validate.py, `resolve_data_config(args, model, use_test_size=not
--use-train-size)`: a model whose pretrained config has a test size (resnet50.a1_in1k: trained at 224,
evaluated at 288 with crop_pct 1.0) is evaluated at it unless a flag sets the size. For one of our runs the
run's data config stands for the flags it was trained with: its interpolation, mean and std always; its image
size and crop_pct where the run chose them (they differ from the model's own), so a run left at the model's
size is evaluated at the model's test size, as timm's validate.py given the run's flags. A run that chose its
own size keeps its crop_pct too (timm would switch to the model's test crop_pct, measured at the test size).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from jax_ema import pretrained, timm_io
from jax_ema.checkpoint import resolve as resolve_checkpoint
from jax_ema.config import DIGITS_DEFAULTS
from jax_ema.data_config import resolve_data_config
from jax_ema.device_input import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from jax_ema.errors import UserError

LEGACY_CROP_PCT = 0.875  # crop_pct of DATA-folder runs that predate the recorded data config


def run_args(step_dir: Path) -> dict:
    """The training run's args.yaml (RUN/args.yaml beside RUN/checkpoints/), or {} where there is none."""
    path = step_dir.parent.parent / 'args.yaml'
    if step_dir.parent.name != 'checkpoints' or not path.is_file():
        return {}
    try:
        args = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f'cannot read {str(path)!r} ({type(e).__name__}); fix or remove it') from None
    if not isinstance(args, dict):
        raise UserError(f'{str(path)!r} is not a mapping of training options; fix or remove it')
    return args


def load_weights(checkpoint, use_ema=False, ema_index=None, model=None, num_classes=None):
    """(path, metadata, {'params', 'batch_stats'}) of one of our checkpoints (a run, its checkpoints/ or a step
    folder), of a timm file (`model` / `num_classes` as timm's validate.py flags; metadata: model,
    num_classes, weights), or with `checkpoint` None of `model`'s pretrained weights (the hub's file)."""
    if checkpoint is None:
        if not model:
            raise UserError('give --checkpoint C, or --model NAME to validate its pretrained weights')
        if use_ema or ema_index is not None:
            raise UserError('pretrained weights have no EMA; leave out --use-ema / --ema-index, or give --checkpoint')
        path = pretrained.download(pretrained.hub_cfg(model))
        metadata, variables = timm_io.read_timm_checkpoint(path, model, num_classes)
        return path, metadata, variables
    if timm_io.is_timm_file(checkpoint) and not Path(checkpoint).is_dir():
        if ema_index is not None:
            raise UserError("--ema-index picks one of our runs' EMAs; a timm file has one: use --use-ema alone")
        metadata, variables = timm_io.read_timm_checkpoint(checkpoint, model, num_classes, use_ema)
        return Path(checkpoint), metadata, variables
    step_dir = resolve_checkpoint(checkpoint)
    metadata, variables = timm_io.variables_from_checkpoint(step_dir, use_ema=use_ema, ema_index=ema_index)
    if not metadata.get('model') or not metadata.get('num_classes'):
        raise UserError(
            f'checkpoint {str(step_dir)!r} does not name its model and number of classes; it is not one of ours'
        )
    for flag, given, key in (('--model', model, 'model'), ('--num-classes', num_classes, 'num_classes')):
        if given is not None and given != metadata[key]:
            raise UserError(f'{flag} {given}: checkpoint {str(step_dir)!r} holds {metadata[key]}; leave {flag} out')
    return step_dir, metadata, variables


def run_flags(step_dir: Path, metadata: dict, args: dict, data, flags: dict) -> dict:
    """`flags` (img_size, input_size, crop_pct, interpolation, mean, std; None = not given) with those not given
    taken from the run, as the module docstring says: what resolve_data_config then receives."""
    model = metadata['model']
    size = metadata.get('img_size') or args.get('img_size')
    if not size:
        raise UserError(f'checkpoint {str(step_dir)!r} does not record its image size; pass --img-size')
    trained = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, interpolation='bilinear')
    trained.update(metadata.get('data_config') or {})  # the run's (older checkpoints: bilinear, ImageNet mean/std)
    crop_pct = (
        trained.get('crop_pct')
        or args.get('crop_pct')
        or (DIGITS_DEFAULTS['crop_pct'] if data is None else LEGACY_CROP_PCT)
    )
    own = resolve_data_config(model)  # the model's train-time config: what the run got without flags
    chose_size = int(size) != own['input_size'][-1]
    out = dict(flags)
    if flags['img_size'] is None and flags['input_size'] is None and chose_size:
        out['img_size'] = int(size)
    if flags['crop_pct'] is None and (chose_size or crop_pct != own['crop_pct']):
        out['crop_pct'] = crop_pct
    for key in ('interpolation', 'mean', 'std'):
        out[key] = trained[key] if flags[key] is None else flags[key]
    return out
