"""--pretrained against timm: the table of pretrained configs against timm's registry, the data config
against timm's resolve_data_config for every model and tag, the first forward of weights fetched from
an (offline, test-built) hub cache against timm's forward with the same weights, and --in-chans N: the
first conv adapted as timm's adapt_input_conv / load_pretrained."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import timm
import torch
from timm.data import resolve_data_config as timm_resolve_data_config
from timm.models import get_pretrained_cfg
from timm.models._manipulate import adapt_input_conv as timm_adapt_input_conv

import timm_gaps
from jax_ema import data_config, export, pretrained, pretrained_cfgs, timm_io
from jax_ema.config import parse_args
from jax_ema.convert import to_timm
from jax_ema.errors import UserError
from jax_ema.models import MODEL_NAMES, create_model
from test_forward import _randomise_batchnorms, _state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'tests'))
from hub_cache import offline_hub, write_hub_cache  # noqa: E402


def _row_from_timm(name: str) -> str:
    """The table row timm's registry implies for `name`, written as pretrained_cfgs.py writes it."""
    cfg = get_pretrained_cfg(name).to_dict()
    norms = {v: k for k, v in vars(pretrained_cfgs).items() if k.isupper() and isinstance(v, tuple) and len(v) == 2}
    norm = norms.get((tuple(cfg['mean']), tuple(cfg['std'])), f'({tuple(cfg["mean"])}, {tuple(cfg["std"])})')
    size = cfg['input_size'][-1] if cfg['input_size'][1:] == (cfg['input_size'][-1],) * 2 else cfg['input_size']
    test = cfg.get('test_input_size')
    test = f', test=({test[-1]}, {cfg.get("test_crop_pct")})' if test else ''
    return (
        f'_row({name!r}, {size}, {cfg["interpolation"]!r}, {cfg["crop_pct"]}, {norm}, {cfg["num_classes"]}, '
        f'{cfg["classifier"]!r}{test}),'
    )


def _ours_as_row(name: str) -> str:
    row = pretrained_cfgs.PRETRAINED_CFGS[name]
    norms = {v: k for k, v in vars(pretrained_cfgs).items() if k.isupper() and isinstance(v, tuple) and len(v) == 2}
    test = f', test=({row.test_input_size[-1]}, {row.test_crop_pct})' if row.test_input_size else ''
    return (
        f'_row({name!r}, {row.input_size[-1]}, {row.interpolation!r}, {row.crop_pct}, '
        f'{norms[(row.mean, row.std)]}, {row.num_classes}, {row.classifier!r}{test}),'
    )


def test_table_has_every_tag_of_every_supported_model_and_its_default():
    known, gap = timm_gaps.pretrained_tags(list(pretrained_cfgs.PRETRAINED_CFGS))  # an older timm: fewer tags
    for arch in MODEL_NAMES:
        ours = sorted(f'{arch}.{t}' for t in pretrained_cfgs.tags(arch) if f'{arch}.{t}' in known)
        assert ours == sorted(timm.list_pretrained(f'{arch}.*'))
        assert pretrained_cfgs.DEFAULT_TAGS[arch] == get_pretrained_cfg(arch).tag
    assert len(known) == sum(len(timm.list_pretrained(f'{a}.*')) for a in MODEL_NAMES)
    if gap:
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(f'{gap}; the others matched')


def test_every_row_matches_timm_registry():
    known, gap = timm_gaps.pretrained_tags(list(pretrained_cfgs.PRETRAINED_CFGS))
    wrong = []
    for name in known:
        row = pretrained_cfgs.PRETRAINED_CFGS[name]
        cfg = get_pretrained_cfg(name).to_dict()
        same = (
            row.hub_id == cfg['hf_hub_id']
            and cfg.get('hf_hub_filename') is None  # timm: model.safetensors
            and row.file == 'model.safetensors'
            and row.input_size == tuple(cfg['input_size'])
            and row.interpolation == cfg['interpolation']
            and row.crop_pct == cfg['crop_pct']
            and row.mean == tuple(cfg['mean'])
            and row.std == tuple(cfg['std'])
            and row.num_classes == cfg['num_classes']
            and row.classifier == cfg['classifier']
            and row.test_input_size == (tuple(cfg['test_input_size']) if cfg.get('test_input_size') else None)
            and row.test_crop_pct == cfg.get('test_crop_pct')
            and cfg['crop_mode'] == pretrained_cfgs.CROP_MODE
            and not cfg.get('label_offset')
            and not cfg.get('custom_load')
            and (row.architecture, row.tag) == (cfg['architecture'], cfg['tag'])
        )
        if not same:
            wrong.append(f'    {_row_from_timm(name)}  # was {_ours_as_row(name)}')
    assert not wrong, 'rows that differ from timm; paste these into pretrained_cfgs.py:\n' + '\n'.join(wrong)
    if gap:
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(f'{gap}; the others matched')


# --- the data config, through our command line, against timm's resolve_data_config ------------------

OVERRIDES = [  # our flags, timm's train.py args (vars(args)) for the same command line
    ([], {}),
    (['--img-size', '48'], dict(img_size=48)),
    (['--img-size', '48', '--input-size', '3', '64', '64'], dict(img_size=48, input_size=[3, 64, 64])),
    (['--crop-pct', '1.0', '--interpolation', 'bilinear'], dict(crop_pct=1.0, interpolation='bilinear')),
    (
        ['--mean', '0.5', '--std', '0.25', '0.5', '0.75', '--interpolation', 'bicubic'],
        dict(mean=[0.5], std=[0.25, 0.5, 0.75], interpolation='bicubic'),
    ),
]


@pytest.mark.parametrize(
    'flags,timm_args', OVERRIDES, ids=['model', 'img_size', 'input_size', 'crop_interp', 'mean_std']
)
def test_data_config_equals_timm_for_every_model_and_tag(tmp_path, flags, timm_args):
    args = dict(
        dict(img_size=None, input_size=None, crop_pct=None, mean=None, std=None, interpolation=''), **timm_args
    )  # what timm's parser leaves unset
    names, gap = timm_gaps.pretrained_tags(list(MODEL_NAMES) + list(pretrained_cfgs.PRETRAINED_CFGS))
    for name in names:
        ours = data_config.of_config(parse_args([str(tmp_path), '--model', name, *flags]))
        if '.' in name:  # a tag: the registry's config, as create_model(name) attaches it
            theirs = timm_resolve_data_config(args, pretrained_cfg=get_pretrained_cfg(name).to_dict())
        else:  # timm.create_model(arch, pretrained=False).pretrained_cfg: the default tag's
            with torch.device('meta'):
                theirs = timm_resolve_data_config(args, model=timm.create_model(name, pretrained=False))
        assert ours == theirs, name
    if gap:
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(f'{gap}; the others matched')


def test_exported_data_config_comes_back_in_timm(tmp_path):
    """The timm call `python -m jax_ema.export` prints, pasted into Python: timm resolves the run's data config."""
    weights = timm_io.save_timm_safetensors(
        _state_dict(timm.create_model('resnet18', num_classes=3)), tmp_path / 'model.safetensors'
    )
    run_config = data_config.resolve_data_config('resnet50.tv2_in1k', crop_pct=0.9, mean=(0.25,))
    done = dict(model='resnet18', num_classes=3, out=str(weights), data_config=data_config.to_json(run_config))
    model = eval(export.timm_call(done), {'timm': timm})  # pylint: disable=eval-used  # what a user pastes
    assert timm_resolve_data_config(model=model) == run_config


# --- the first forward of --pretrained weights from an offline hub cache ------------------------------


@pytest.mark.parametrize('name', ['resnet18', 'mobilenetv3_small_100'])
def test_first_forward_of_hub_weights_equals_timm(tmp_path, name):
    """timm's model (random BatchNorm statistics) saved in a test-built hub cache as the default tag's file;
    `pretrained` fetches it with HF_HUB_OFFLINE=1, keeps its 1000-class classifier, and our forward at 64 px
    equals timm's within 1e-5 of max|logits| (matmuls at 'highest' precision)."""
    torch.manual_seed(0)
    model = _randomise_batchnorms(timm.create_model(name, pretrained=False), seed=1).eval()
    write_hub_cache(tmp_path, pretrained.hub_cfg(name).hub_id, _state_dict(model))
    flax_model = create_model(name, 1000)
    with offline_hub(tmp_path):  # the classifier fits: no fresh initialisation is needed (None)
        variables = pretrained.load_pretrained(name, 1000, None, pretrained.read_weights(name))
    x = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
    with jax.default_matmul_precision('highest'):
        ours = np.asarray(jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, x))
    with torch.no_grad():
        theirs = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


# --- --in-chans N with --pretrained: the first conv adapted as timm's load_pretrained ------------------


def test_first_conv_of_every_row_is_timms():
    known, gap = timm_gaps.pretrained_tags(list(pretrained_cfgs.PRETRAINED_CFGS))
    for name in known:
        assert pretrained_cfgs.first_conv(name.split('.')[0]) == get_pretrained_cfg(name).first_conv, name
    if gap:
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(f'{gap}; the others matched')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize('in_chans', [1, 2, 3, 4, 5, 7])
def test_adapt_input_conv_equals_timm(in_chans, dtype):
    """Bit for bit and in the weight's dtype (timm sums and scales in float32, then casts back)."""
    weight = torch.randn(16, 3, 5, 5, generator=torch.Generator().manual_seed(in_chans)).to(dtype)
    theirs = timm_adapt_input_conv(in_chans, weight.clone()).numpy()
    ours = pretrained.adapt_input_conv(in_chans, weight.numpy())
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (16, in_chans, 5, 5)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    'name,in_chans', [('resnet18', 1), ('resnet18', 4), ('mobilenetv3_small_100', 1)], ids=lambda v: str(v)
)
def test_pretrained_in_chans_equals_timm(tmp_path, caplog, name, in_chans):
    """One weights file, timm's create_model(name, pretrained=True, in_chans=N, pretrained_cfg_overlay=
    dict(file=...)) (its --pretrained-path) and ours: the same adapted first conv, the same log line, and the
    same logits at 32 px (within 1e-5 of max|logits|, matmuls at 'highest' precision)."""
    torch.manual_seed(0)
    source = _randomise_batchnorms(timm.create_model(name, pretrained=False), seed=1).eval()
    path = timm_io.save_timm_safetensors(_state_dict(source), tmp_path / 'model.safetensors')
    caplog.set_level('INFO')
    theirs = timm.create_model(
        name, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    arch = dict(in_chans=in_chans)
    variables = pretrained.load_pretrained(name, 1000, None, pretrained.read_weights(name, path), arch)
    key = f'{pretrained_cfgs.first_conv(name)}.weight'
    np.testing.assert_array_equal(to_timm(name, variables, arch)[key], theirs.state_dict()[key].numpy())
    said = {r.name: r.getMessage() for r in caplog.records if r.getMessage().startswith('Converted input conv')}
    assert said['jax_ema.pretrained'] == said['timm.models._builder']
    x = np.random.RandomState(in_chans).randn(2, 32, 32, in_chans).astype(np.float32)
    with jax.default_matmul_precision('highest'):
        ours = np.asarray(jax.jit(lambda v, x: create_model(name, 1000, **arch).apply(v, x, train=False))(variables, x))
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()


def test_first_conv_of_other_channels_is_refused_as_by_timm(tmp_path):
    """A 2-channel conv1 for a 1-channel model: timm raises (input_size says 3), we say it in one line."""
    state_dict = _state_dict(timm.create_model('resnet18', pretrained=False))
    state_dict['conv1.weight'] = state_dict['conv1.weight'][:, :2]
    path = timm_io.save_timm_safetensors(state_dict, tmp_path / 'model.safetensors')
    with pytest.raises(RuntimeError, match='inconsistent with input_size'):
        timm.create_model('resnet18', pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(UserError, match='2 input channels, not the 3 of resnet18 pretrained weights'):
        pretrained.load_pretrained('resnet18', 1000, None, timm_io.load_timm_state_dict(path), dict(in_chans=1))
