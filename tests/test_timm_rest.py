"""timm train.py's remaining options (issue 20): each against timm's own code or behaviour, and the refusals.
The data options (--class-map, --input-img-mode, --epoch-repeats, --train-batches-per-epoch) are in
test_timm_rest_data.py, --train-crop-mode rkrc / rkrr in test_crop_modes.py.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from timm.utils import ParseKwargs

import data_world
from cli_output import error_line
from data_world import IMG, class_folders
from jax_ema import convert, optim
from jax_ema.config import Config, parse_args
from jax_ema.errors import UserError
from jax_ema.flags import parse_kwargs
from jax_ema.flags.optimizer import eps_and_betas
from jax_ema.models import init_head

listing_cache = data_world.listing_cache  # fixture


# --- --model-kwargs / --opt-kwargs -------------------------------------------------------------------------


def test_kwargs_parse_as_timms_parse_kwargs():
    tokens = ['a=1', 'b=0.5', 'c=(0.9, 0.99)', 'd=silu', "e='x'", 'f=True', 'g=None', '']
    timm = argparse.ArgumentParser()
    timm.add_argument('--kw', nargs='*', default={}, action=ParseKwargs)
    assert parse_kwargs(tokens, '--kw') == timm.parse_args(['--kw', *tokens]).kw
    with pytest.raises(UserError, match='KEY=VALUE'):
        parse_kwargs(['novalue'], '--kw')


def test_model_kwargs_reach_the_model_and_flag_keys_are_refused():
    config = parse_args(['--model', 'efficientnet_b0', '--model-kwargs', 'stem_size=16'])
    from jax_ema.flags.model import extra_model_kwargs as model_kwargs
    from jax_ema.models import create_model

    assert create_model(config.model, 3, **model_kwargs(config)).stem_size == 16
    with pytest.raises(UserError, match='--drop-path'):
        parse_args(['--model-kwargs', 'drop_path_rate=0.1'])


def test_opt_kwargs_map_to_eps_and_betas_as_the_flags():
    by_kwargs = parse_args(['--opt', 'adamw', '--opt-kwargs', 'eps=1e-6', 'betas=(0.8,0.9)'])
    by_flags = parse_args(['--opt', 'adamw', '--opt-eps', '1e-6', '--opt-betas', '0.8', '0.9'])
    assert eps_and_betas(by_kwargs) == (1e-6, (0.8, 0.9)) and eps_and_betas(by_flags) == (1e-6, (0.8, 0.9))
    params = {'w': jnp.ones((3,))}
    grads = {'w': jnp.array([0.1, -0.2, 0.3])}
    updates = []
    for config in (by_kwargs, by_flags):
        _, _, _, tx = optim.create_optimizer_and_schedule(config, 10, 64)
        updates.append(tx.update(grads, tx.init(params), params)[0]['w'])
    np.testing.assert_array_equal(updates[0], updates[1])
    for tokens, message in (
        (['momentum=0.5'], 'not an option'),  # timm fails on it too: create_optimizer_v2 gets momentum twice
        (['amsgrad=True'], 'not an option'),
        (['betas=0.9'], 'two numbers'),
    ):
        with pytest.raises(UserError, match=message):
            parse_args(['--opt-kwargs', *tokens])
    with pytest.raises(UserError, match='also set by --opt-eps'):
        parse_args(['--opt-eps', '1e-3', '--opt-kwargs', 'eps=1e-6'])


# --- --head-init-scale / --head-init-bias ----------------------------------------------------------------


@pytest.mark.parametrize('model_name', ['resnet18', 'mobilenetv3_small_100'])
def test_head_init_as_timms_train_py(model_name):
    """timm's train.py lines on a timm model, converted, equal init_head on the converted untouched model."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=5)
    variables = convert.to_flax(model_name, {k: v.numpy() for k, v in model.state_dict().items()})
    with torch.no_grad():  # train.py's head init, on the torch model
        model.get_classifier().weight.mul_(0.25)
        model.get_classifier().bias.mul_(0.25)
        torch.nn.init.constant_(model.get_classifier().bias, -1.5)
    expected = convert.to_flax(model_name, {k: v.numpy() for k, v in model.state_dict().items()})
    ours = init_head(variables, 0.25, -1.5)
    jax.tree.map(np.testing.assert_array_equal, ours, expected)
    scaled_only = init_head(variables, 0.25, None)
    head = 'fc' if model_name == 'resnet18' else 'classifier'
    np.testing.assert_allclose(scaled_only['params'][head]['bias'], 0.25 * variables['params'][head]['bias'])


# --- accepted without effect, refused -------------------------------------------------------------------------


def test_no_effect_flags_are_accepted_and_unbuilt_ones_refused():
    config = parse_args(['--drop-connect', '0.2', '--train-num-samples', '5', '--val-num-samples', '5'])
    assert config.drop_connect == 0.2 and config.train_num_samples == 5
    assert parse_args(['--train-crop-mode', 'rrc', '--tta', '1']).tta == 1
    for argv, message in (
        (['--train-crop-mode', 'rkr'], 'not one of rrc, rkrc, rkrr'),
        (['--tta', '2'], 'not built'),
        (['--drop-connect', '1.5'], r'\[0, 1\)'),
        (['--epoch-repeats', '-1'], '>= 0'),
    ):
        with pytest.raises(UserError, match=message):
            parse_args(argv)
    assert Config().save_images is False


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_with_the_options(tmp_path, capsys, monkeypatch):
    """Trained from one directory with a relative --class-map; validated, resumed (-c RUN/args.yaml) from another."""
    from jax_ema.train import main

    root = class_folders(tmp_path / 'ds', ['ant', 'bee', 'cat'], per_class=4)
    (tmp_path / 'map.txt').write_text('bee\nant\n')
    monkeypatch.chdir(tmp_path)
    argv = [
        str(root),
        *('--model', 'resnet18', '--img-size', str(IMG), '-b', '2', '--epochs', '1', '--warmup-epochs', '0'),
        *('--lr', '0.01', '--log-interval', '2', '--output', str(tmp_path / 'out'), '--experiment', 'x'),
        *('--class-map', 'map.txt', '--train-batches-per-epoch', '5', '--save-images'),
        *('--head-init-scale', '0.5', '--head-init-bias', '0', '--opt-kwargs', 'eps=1e-6', '--grad-checkpointing'),
    ]
    assert main(argv) == 0
    out = capsys.readouterr()
    run = tmp_path / 'out' / 'x'
    assert 'no effect' not in out.out + out.err  # --grad-checkpointing is built (test_grad_checkpointing.py)
    results = json.loads((run / 'results.json').read_text())
    assert results['best_epoch'] == 0
    assert sorted(p.name for p in run.glob('train-batch-*.png')) == [f'train-batch-{i}.png' for i in (0, 2, 4)]
    grid = np.asarray(Image.open(run / 'train-batch-0.png'))
    assert grid.shape == (IMG, 8 * IMG, 3) and grid[:, : 2 * IMG].std() > 0 and not grid[:, 2 * IMG :].any()
    from jax_ema import checkpoint

    meta = checkpoint.read_metadata(checkpoint.resolve(run))
    assert meta['num_classes'] == 2 and meta['updates_per_epoch'] == 5  # 5 updates: the epoch of 8 images wrapped
    assert meta['model_kwargs'] == dict(grad_checkpointing=True)  # validated and resumed below
    from jax_ema.validate import main as validate_main, validate

    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    checked = validate(run, root)  # the run's --class-map (recorded absolute) labels the folders again
    assert checked['num_images'] == 8 and checked['top1'] == results['final']['raw']['top1']
    # a resume with another epoch length goes on from the next epoch's start under the new length
    resumed = ['-c', str(run / 'args.yaml'), '--epochs', '2', '--train-batches-per-epoch', '3', '--resume', str(run)]
    assert main(resumed) == 0
    out = capsys.readouterr()
    assert 'updates per epoch (5 -> 3)' in out.out + out.err
    meta = checkpoint.read_metadata(checkpoint.resolve(run))
    assert meta['epoch'] == 1 and meta['updates_per_epoch'] == 3
    (tmp_path / 'map.txt').unlink()
    assert validate_main([str(root), '--checkpoint', str(run)]) == 2
    assert f"the run's --class-map {str(tmp_path / 'map.txt')!r} is not found" in error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--tta', '2'], '--tta 2 is not built'),
        (['--model-kwargs', 'foo=1'], '--model-kwargs: resnet18 does not take it'),
        (['--class-map', 'missing.txt'], "cannot read --class-map 'missing.txt'"),
        (['--opt-kwargs', 'amsgrad=True'], '--opt-kwargs amsgrad=... is not an option'),
    ],
)
def test_bad_values_give_one_line_and_exit_2(tmp_path, capsys, extra, message):
    from jax_ema.train import main

    root = class_folders(tmp_path / 'ds', ['ant', 'bee'])
    argv = [str(root), '--model', 'resnet18', '--img-size', str(IMG), '--output', str(tmp_path / 'out'), *extra]
    assert main(argv) == 2
    assert message in error_line(capsys.readouterr().err)  # after the run's log lines, one error line
    assert not (tmp_path / 'out').exists()
