"""timm reads our exports and we read timm's files: same weights choice, same logits (eval mode, resnet18).

(a) a trained checkpoint exported with and without --use-ema loads into `timm.create_model(...,
    checkpoint_path=...)` with every key and gives our logits of those weights;
(b) timm weights saved as .safetensors and as timm-style .pth.tar / .pth / .bin files are read as timm's own
    `load_state_dict` reads them (same dict for every layout and use_ema) and give timm's logits.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import timm
import timm.models
import torch

from jax_ema import checkpoint, ema, optim
from jax_ema.convert import to_flax
from jax_ema.errors import UserError
from jax_ema.export import main as export_main
from jax_ema.models import create_model
from jax_ema.timm_io import load_timm_state_dict
from jax_ema.train import create_train_state, train_step
from test_forward import DEVICE, _randomise_batchnorms

NAME, NUM_CLASSES, IMG = 'resnet18', 5, 32
RTOL = 1e-5  # of max |logits|


@pytest.fixture(scope='module')
def flax_logits():
    model = create_model(NAME, NUM_CLASSES)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return lambda variables, x: np.asarray(apply(variables, x))


@pytest.fixture(scope='module')
def images():
    return np.random.default_rng(0).normal(size=(4, IMG, IMG, 3)).astype(np.float32)


def _timm_logits(model, x):
    with torch.no_grad():
        return model.eval().to(DEVICE)(torch.from_numpy(x).to(DEVICE).permute(0, 3, 1, 2)).cpu().numpy()


def _max_rel_err(ours, theirs):
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# (a) our checkpoint -> timm


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A resnet18 run with EMA (decay 0.9) after 3 updates, so raw and EMA weights and BN stats differ."""
    cfg = ema.EmaConfig(decay=0.9)
    model = create_model(NAME, NUM_CLASSES)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMG, IMG, 3)), train=False)
    state = create_train_state(model, optim.create_optimizer('sgd', lambda step: 0.1, 1e-4, 0.9), variables, cfg)
    step = jax.jit(lambda s, b: train_step(s, b, cfg, 0.1))
    rng = np.random.default_rng(1)
    for _ in range(3):
        batch = {
            'image': rng.normal(size=(8, IMG, IMG, 3)).astype(np.float32),
            'label': rng.integers(0, NUM_CLASSES, size=8).astype(np.int32),
        }
        state, _ = step(state, batch)
    run_dir = tmp_path_factory.mktemp('trained')
    manager = checkpoint.open_manager(run_dir / 'checkpoints')
    checkpoint.save(
        manager,
        state,
        dict(model=NAME, num_classes=NUM_CLASSES, img_size=IMG, ema={'decay': 0.9}, epoch=0, position=0),
        score=0.0,
    )
    manager.close()
    weights = jax.device_get(
        {
            'raw': {'params': state.params, 'batch_stats': state.batch_stats},
            'ema': {'params': ema.tree(state.ema_params), 'batch_stats': ema.tree(state.ema_batch_stats)},
        }
    )
    return run_dir, weights


@pytest.mark.parametrize('which', ['ema', 'raw'])
def test_timm_loads_our_export_and_gives_our_logits(trained, which, flax_logits, images, tmp_path):
    run_dir, weights = trained
    out = tmp_path / 'model.safetensors'
    assert export_main(['--checkpoint', str(run_dir), '--out', str(out)] + ['--use-ema'] * (which == 'ema')) == 0
    model = timm.create_model(NAME, pretrained=False, num_classes=NUM_CLASSES, checkpoint_path=str(out))
    assert set(model.state_dict()) == set(safetensors.numpy.load_file(out))  # strict load: every key
    theirs = _timm_logits(model, images)
    ours = flax_logits(weights[which], images)
    other = flax_logits(weights['raw' if which == 'ema' else 'ema'], images)
    assert _max_rel_err(ours, theirs) < RTOL
    assert _max_rel_err(other, theirs) > 100 * RTOL  # the other weights would be told apart


# (b) timm files -> ours


def _randomised(seed):
    """A timm resnet18 whose every weight and BN statistic is random (timm zero-inits some BN scales)."""
    torch.manual_seed(seed)
    model = _randomise_batchnorms(timm.create_model(NAME, pretrained=False, num_classes=NUM_CLASSES), seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.num_batches_tracked.fill_(7)
    return model.eval()


def _cloned(model, prefix=''):
    return {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def timm_files(tmp_path_factory):
    """Two timm models ('raw' and 'ema') and the files timm users have, in several layouts."""
    models = {'raw': _randomised(1), 'ema': _randomised(2)}
    root = tmp_path_factory.mktemp('timm_files')
    files = {
        'flat.safetensors': None,
        'flat.pth': _cloned(models['raw']),
        'train.pth.tar': {
            'epoch': 3,
            'arch': NAME,
            'state_dict': _cloned(models['raw']),
            'state_dict_ema': _cloned(models['ema']),
            'args': argparse.Namespace(model=NAME),
        },
        'ddp_no_ema.pth.tar': {'state_dict': _cloned(models['raw'], 'module.'), 'state_dict_ema': None},
        'model_keys.bin': {
            'model': _cloned(models['raw'], '_orig_mod.'),
            'model_ema': _cloned(models['ema'], 'module.'),
        },
    }
    safetensors.torch.save_file(_cloned(models['raw']), str(root / 'flat.safetensors'))
    for name, contents in files.items():
        if contents is not None:
            torch.save(contents, root / name)
    return root, models


LAYOUTS = ['flat.safetensors', 'flat.pth', 'train.pth.tar', 'ddp_no_ema.pth.tar', 'model_keys.bin']


@pytest.mark.parametrize('use_ema', [False, True])
@pytest.mark.parametrize('layout', LAYOUTS)
def test_we_read_what_timm_reads(timm_files, layout, use_ema):
    root, _ = timm_files
    theirs = timm.models.load_state_dict(str(root / layout), use_ema=use_ema)
    ours = load_timm_state_dict(root / layout, use_ema=use_ema)
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize(
    'layout, use_ema, which',
    [
        ('flat.safetensors', False, 'raw'),
        ('train.pth.tar', False, 'raw'),
        ('train.pth.tar', True, 'ema'),
        ('ddp_no_ema.pth.tar', True, 'raw'),
        ('model_keys.bin', True, 'ema'),
    ],
)
def test_imported_weights_give_timm_logits(timm_files, layout, use_ema, which, flax_logits, images):
    root, models = timm_files
    variables = to_flax(NAME, load_timm_state_dict(root / layout, use_ema=use_ema))
    ours = flax_logits(variables, images)
    theirs = _timm_logits(models[which], images)
    other = _timm_logits(models['raw' if which == 'ema' else 'ema'], images)
    assert _max_rel_err(ours, theirs) < RTOL
    assert _max_rel_err(ours, other) > 100 * RTOL


class _NotATensor:
    pass


def test_unsafe_or_damaged_pth_is_a_user_error(tmp_path):
    torch.save({'state_dict': {'fc.bias': torch.zeros(2)}, 'extra': _NotATensor()}, tmp_path / 'unsafe.pth')
    (tmp_path / 'damaged.pth.tar').write_bytes(b'not a torch file' * 10)
    with pytest.raises(UserError, match=r'unsafe\.pth.*for safety'):
        load_timm_state_dict(tmp_path / 'unsafe.pth')
    with pytest.raises(UserError, match=r'cannot read .*damaged\.pth\.tar'):
        load_timm_state_dict(tmp_path / 'damaged.pth.tar')
