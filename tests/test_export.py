"""Export of raw / EMA checkpoint weights to timm .safetensors, and the timm file reader (no torch here)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from jax_ema import checkpoint, ema, optim, timm_io
from jax_ema.convert import to_timm
from jax_ema.errors import UserError
from jax_ema.export import main
from jax_ema.models import create_model
from jax_ema.train import create_train_state, train_step

IMG, NUM_CLASSES = 32, 3


def _batch(seed, n=4):
    rng = np.random.default_rng(seed)
    return {
        'image': rng.normal(size=(n, IMG, IMG, 3)).astype(np.float32),
        'label': rng.integers(0, NUM_CLASSES, size=n).astype(np.int32),
    }


def _save(run_dir, state, ema_meta):
    manager = checkpoint.open_manager(run_dir / 'checkpoints')
    meta = dict(model='resnet18', num_classes=NUM_CLASSES, img_size=IMG, ema=ema_meta, epoch=0, position=0)
    step_dir = checkpoint.save(manager, state, meta, score=1.0)
    manager.close()
    return step_dir


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Two runs of one tiny resnet18 after 3 updates: with EMA (decay 0.9) and without; plus their weights."""
    cfg = ema.EmaConfig(decay=0.9)
    model = create_model('resnet18', NUM_CLASSES)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMG, IMG, 3)), train=False)
    tx = optim.create_optimizer('sgd', lambda step: 0.05, 1e-4, 0.9)
    state = create_train_state(model, tx, variables, cfg)
    step = jax.jit(lambda s, b: train_step(s, b, cfg, 0.1))
    for i in range(3):
        state, _ = step(state, _batch(i))
    root = tmp_path_factory.mktemp('export')
    ema_dir = _save(root / 'ema_run', state, {'decay': 0.9})
    plain_dir = _save(root / 'plain_run', state.replace(ema_params=None, ema_batch_stats=None), None)
    weights = jax.device_get(
        {
            'raw': {'params': state.params, 'batch_stats': state.batch_stats},
            'ema': {'params': ema.tree(state.ema_params), 'batch_stats': ema.tree(state.ema_batch_stats)},
        }
    )
    return dict(root=root, ema_dir=ema_dir, plain_dir=plain_dir, weights=weights)


def _assert_equal_state_dicts(got, want):
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


@pytest.mark.parametrize('which', ['raw', 'ema'])
def test_export_writes_to_timm_of_the_chosen_weights(runs, which, tmp_path, capsys):
    out = tmp_path / 'model.safetensors'
    argv = ['--checkpoint', str(runs['root'] / 'ema_run'), '--out', str(out)] + (['--use-ema'] * (which == 'ema'))
    assert main(argv) == 0
    _assert_equal_state_dicts(safetensors.numpy.load_file(out), to_timm('resnet18', runs['weights'][which]))
    printed = capsys.readouterr().out
    assert 'resnet18' in printed and f'{NUM_CLASSES} classes' in printed and str(out) in printed
    assert ('EMA weights' if which == 'ema' else 'raw weights') in printed
    assert os.listdir(tmp_path) == ['model.safetensors']  # no temporary file left behind


def test_export_carries_the_runs_data_config(runs, tmp_path, capsys):
    """The data config of the checkpoint's metadata goes into the file's header and the printed timm call."""
    config = dict(
        input_size=[3, IMG, IMG],
        interpolation='bicubic',
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
        crop_pct=0.95,
        crop_mode='center',
    )
    manager = checkpoint.open_manager(tmp_path / 'run' / 'checkpoints')
    checkpoint.save_tree(
        manager,
        checkpoint.restore_tree(runs['ema_dir']),
        dict(checkpoint.read_metadata(runs['ema_dir']), data_config=config),
    )
    manager.close()
    out = tmp_path / 'model.safetensors'
    assert main(['--checkpoint', str(tmp_path / 'run'), '--out', str(out)]) == 0
    with safetensors.safe_open(out, 'np') as f:
        assert json.loads(f.metadata()['jax_ema.data_config']) == config and f.metadata()['format'] == 'pt'
    assert (
        f"checkpoint_path='{out}', pretrained_cfg_overlay=dict(input_size=(3, {IMG}, {IMG}), "
        "interpolation='bicubic', mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.95, "
        "crop_mode='center'))"
    ) in capsys.readouterr().out


def test_raw_and_ema_weights_differ(runs):
    """Otherwise the test above could not tell which weights were exported."""
    raw, averaged = to_timm('resnet18', runs['weights']['raw']), to_timm('resnet18', runs['weights']['ema'])
    assert not np.array_equal(raw['layer1.0.conv1.weight'], averaged['layer1.0.conv1.weight'])
    assert not np.array_equal(raw['bn1.running_var'], averaged['bn1.running_var'])


@pytest.mark.parametrize('where', ['run', 'checkpoints', 'step', 'last', 'best'])
def test_checkpoint_argument_forms(runs, where, tmp_path):
    run = runs['root'] / 'plain_run'
    path = {
        'run': run,
        'checkpoints': run / 'checkpoints',
        'step': runs['plain_dir'],
        'last': run / 'checkpoints' / 'last',
        'best': run / 'best',
    }[where]
    out = tmp_path / 'model.safetensors'
    assert main(['--checkpoint', str(path), '--out', str(out)]) == 0
    _assert_equal_state_dicts(safetensors.numpy.load_file(out), to_timm('resnet18', runs['weights']['raw']))


def test_variables_from_checkpoint(runs):
    metadata, variables = timm_io.variables_from_checkpoint(runs['ema_dir'], use_ema=True)
    assert metadata['model'] == 'resnet18' and metadata['num_classes'] == NUM_CLASSES
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(runs['weights']['ema'])):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)
    assert jax.tree.structure(variables) == jax.tree.structure(runs['weights']['ema'])
    with pytest.raises(UserError, match='without EMA'):
        timm_io.variables_from_checkpoint(runs['plain_dir'], use_ema=True)


def test_missing_checkpoint(tmp_path, capsys):
    assert main(['--checkpoint', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'm.safetensors')]) == 2
    assert 'nothing' in _one_error_line(capsys)
    assert os.listdir(tmp_path) == []


def test_use_ema_without_ema(runs, tmp_path, capsys):
    out = tmp_path / 'm.safetensors'
    assert main(['--checkpoint', str(runs['root'] / 'plain_run'), '--use-ema', '--out', str(out)]) == 2
    assert 'without EMA' in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize('bad', ['no_folder', 'folder', 'under_a_file', 'suffix', 'missing'])
def test_bad_out_path(runs, bad, tmp_path, capsys):
    (tmp_path / 'a_file').write_text('x')
    (tmp_path / 'a_folder.safetensors').mkdir()
    out = {
        'no_folder': tmp_path / 'nope' / 'm.safetensors',
        'folder': tmp_path / 'a_folder.safetensors',
        'under_a_file': tmp_path / 'a_file' / 'm.safetensors',
        'suffix': tmp_path / 'm.pth',
    }.get(bad)
    argv = ['--checkpoint', str(runs['plain_dir'])] + (['--out', str(out)] if out else [])
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert str(out) in line if out else '--out' in line
    assert sorted(os.listdir(tmp_path)) == ['a_file', 'a_folder.safetensors']


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failed write leaves the previous file whole and no temporary file."""
    path = tmp_path / 'm.safetensors'
    timm_io.save_timm_safetensors({'w': np.ones((2, 3), np.float32)}, path)

    def fail(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(safetensors.numpy, 'save_file', fail)
    with pytest.raises(UserError, match='No space left'):
        timm_io.save_timm_safetensors({'w': np.zeros((2, 3), np.float32)}, path)
    assert os.listdir(tmp_path) == ['m.safetensors']
    np.testing.assert_array_equal(safetensors.numpy.load_file(path)['w'], np.ones((2, 3), np.float32))


def test_save_makes_arrays_contiguous_and_load_strips_wrappers(tmp_path):
    path = tmp_path / 'w.safetensors'
    weight = np.arange(12, dtype=np.float32).reshape(3, 4).T  # a Fortran-ordered view
    timm_io.save_timm_safetensors({'module.fc.weight': weight, '_orig_mod.module.fc.bias': np.ones(4)}, path)
    loaded = timm_io.load_timm_state_dict(path)
    assert set(loaded) == {'fc.weight', 'fc.bias'}
    np.testing.assert_array_equal(loaded['fc.weight'], weight)


@pytest.mark.parametrize(
    'name, message',
    [
        ('missing.safetensors', 'does not exist'),
        ('weights.npz', 'unknown extension'),
        ('garbage.safetensors', 'cannot read'),
    ],
)
def test_load_bad_files(tmp_path, name, message):
    (tmp_path / 'garbage.safetensors').write_bytes(b'not a safetensors file' * 10)
    (tmp_path / 'weights.npz').write_bytes(b'')
    with pytest.raises(UserError, match=message) as info:
        timm_io.load_timm_state_dict(tmp_path / name)
    assert name in str(info.value) and '\n' not in str(info.value)


def test_pth_without_torch_is_a_user_error(tmp_path, monkeypatch):
    path = tmp_path / 'w.pth'
    path.write_bytes(b'x')
    monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError
    with pytest.raises(UserError, match='needs PyTorch'):
        timm_io.load_timm_state_dict(path)


def test_initial_variables_check_the_model(runs, tmp_path):
    out = tmp_path / 'm.safetensors'
    assert main(['--checkpoint', str(runs['plain_dir']), '--out', str(out)]) == 0
    variables = timm_io.load_initial_variables(out, 'resnet18', NUM_CLASSES)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(runs['weights']['raw'])):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    with pytest.raises(UserError, match='classes'):
        timm_io.load_initial_variables(out, 'resnet18', NUM_CLASSES + 1)
    with pytest.raises(UserError, match=r"missing key 'layer1\.2\."):
        timm_io.load_initial_variables(out, 'resnet34', NUM_CLASSES)
