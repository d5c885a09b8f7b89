"""validate's data config against timm validate.py's `resolve_data_config(vars(args), model=model,
use_test_size=not args.use_train_size)`: for a model's pretrained weights (or a timm file) from validate's
flags, and for one of our runs from the flags it was trained with, for every model and tag; and the models
`--model all` / a wildcard select against timm's `list_models`."""

import functools
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config as timm_resolve_data_config
from timm.models import get_pretrained_cfg

from jax_ema import data_config, pretrained_cfgs, validate_bulk
from jax_ema.config import parse_args
from jax_ema.models import MODEL_NAMES
from jax_ema.validate import build_parser
from jax_ema.validate_weights import run_flags

NAMES = list(MODEL_NAMES) + list(pretrained_cfgs.PRETRAINED_CFGS)
UNSET = dict(img_size=None, input_size=None, crop_pct=None, mean=None, std=None, interpolation='')  # timm's parser
FLAGS = ('img_size', 'input_size', 'crop_pct', 'interpolation', 'mean', 'std')


def _timm(name: str, args: dict, use_test_size: bool) -> dict:
    """timm's data config for `name` as its validate.py resolves it (a tag: the registry's pretrained config;
    an architecture: create_model's, the default tag's)."""
    args = dict(UNSET, **args)
    if '.' in name:
        return timm_resolve_data_config(
            args, pretrained_cfg=get_pretrained_cfg(name).to_dict(), use_test_size=use_test_size
        )
    return timm_resolve_data_config(args, model=_timm_model(name), use_test_size=use_test_size)


@functools.cache
def _timm_model(name: str):
    with torch.device('meta'):
        return timm.create_model(name, pretrained=False)


def _validate_flags(argv: list[str]) -> dict:
    """The data-config flags of a validate command line, as validate() passes them on."""
    args = vars(build_parser().parse_args(['--checkpoint', 'x', *argv]))
    return {key: args[key] for key in FLAGS}


VALIDATE_FLAGS = [  # validate's flags, timm validate.py's args for the same command line
    ([], {}),
    (['--img-size', '48'], dict(img_size=48)),
    (['--input-size', '3', '64', '64', '--img-size', '48'], dict(img_size=48, input_size=[3, 64, 64])),
    (['--crop-pct', '0.8'], dict(crop_pct=0.8)),
    (
        ['--interpolation', 'bilinear', '--mean', '0.5', '--std', '0.2'],
        dict(interpolation='bilinear', mean=[0.5], std=[0.2]),
    ),
]


@pytest.mark.parity
@pytest.mark.parametrize('use_train_size', [False, True], ids=['test_size', 'train_size'])
@pytest.mark.parametrize('argv,timm_args', VALIDATE_FLAGS, ids=['model', 'img_size', 'input_size', 'crop', 'norm'])
def test_pretrained_weights_data_config_equals_timm(argv, timm_args, use_train_size):
    flags = _validate_flags([*argv, *(['--use-train-size'] if use_train_size else [])])
    for name in NAMES:
        ours = data_config.resolve_data_config(name, **flags, use_test_size=not use_train_size)
        assert ours == _timm(name, timm_args, not use_train_size), name


TRAIN_FLAGS = [  # train.py flags of a run; validate given nothing, and timm's validate.py given the same flags
    ([], {}),
    (['--crop-pct', '0.8'], dict(crop_pct=0.8)),
    (
        ['--interpolation', 'bilinear', '--mean', '0.5', '--std', '0.2'],
        dict(interpolation='bilinear', mean=[0.5], std=[0.2]),
    ),
]


@pytest.mark.parity
@pytest.mark.parametrize('use_train_size', [False, True], ids=['test_size', 'train_size'])
@pytest.mark.parametrize('train_argv,timm_args', TRAIN_FLAGS, ids=['model', 'crop', 'norm'])
@pytest.mark.parametrize('validate_argv', [[], ['--img-size', '48']], ids=['run', 'img_size'])
def test_runs_data_config_equals_timm_given_the_runs_flags(
    tmp_path, train_argv, timm_args, validate_argv, use_train_size
):
    """A run at the model's own size: validate reads the run's data config from its checkpoint; timm's
    validate.py is given the flags the run was trained with (plus validate's own)."""
    flags = _validate_flags(validate_argv)
    timm_args = dict(timm_args, **({'img_size': 48} if validate_argv else {}))
    for name in NAMES:
        config = parse_args([str(tmp_path), '--model', name, *train_argv])
        metadata = dict(model=name, img_size=config.img_size, data_config=data_config.to_json(config.data_config))
        resolved = run_flags(Path('run/checkpoints/1'), metadata, {}, str(tmp_path), flags)
        ours = data_config.resolve_data_config(name, **resolved, use_test_size=not use_train_size)
        assert ours == _timm(name, timm_args, not use_train_size), name


@pytest.mark.parity
@pytest.mark.parametrize('pattern', ['all', 'resnet18*', 'resnet1*.a*', '*mobilenetv3*', '*_in1k', 'efficientnet_b?'])
def test_bulk_model_selection_equals_timms_list_models(pattern):
    """--model all / a wildcard: timm validate.py's `list_models(...)` less the models we do not build."""
    if pattern == 'all':
        theirs = timm.list_models(pretrained=True, exclude_filters=list(validate_bulk.NON_IN1K_FILTERS))
    else:
        theirs = timm.list_models(pattern, pretrained=True)
    built = [n for n in theirs if n.split('.')[0] in MODEL_NAMES]
    assert built and validate_bulk.pretrained_models(pattern) == built
