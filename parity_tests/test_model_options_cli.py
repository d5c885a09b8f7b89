"""The model and optimizer options through the CLI, end to end: a resnet18 run with --gp catavgmax --in-chans 1
(greyscale on the device), --drop --drop-path --drop-block and --layer-decay, exported with --use-ema, loads
strictly into timm.create_model(..., global_pool='catavgmax', in_chans=1) as the export prints it, and gives our
logits; `jax_ema.validate` rebuilds the same model from the checkpoint.

The trainer's input pipeline is tf.data: without TensorFlow (the GPU image) this module is skipped.
"""

import importlib.util

import jax
import numpy as np
import pytest
import timm
from PIL import Image

from jax_ema import checkpoint
from jax_ema.export import main as export_main
from jax_ema.models import create_model
from jax_ema.train import main as train_main
from jax_ema.validate import main as validate_main
from test_forward import DEVICE, _max_rel_err, _torch_forward

pytestmark = [
    pytest.mark.slow,  # one CLI training run (a resnet18 compile)
    pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None, reason='no TensorFlow: tf.data needs it'),
]
KWARGS = dict(global_pool='catavgmax', in_chans=1)


def test_catavgmax_greyscale_run_with_drops_and_layer_decay_exports_to_timm(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for c in range(2):
            folder = tmp_path / 'ds' / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 60, size=(40, 40, 3)) + 150 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{i}.png')
    flags = '--gp catavgmax --in-chans 1 --mean 0.5 --std 0.5 --drop 0.1 --drop-path 0.1 --drop-block 0.1'
    flags += ' --layer-decay 0.7 --img-size 32 -b 4 --epochs 1 --warmup-epochs 0 --lr 1e-3 --model-ema'
    flags += ' --model-ema-decay 0.5 --model resnet18 --experiment run'
    argv = [str(tmp_path / 'ds'), *flags.split(), '--output', str(tmp_path)]
    assert train_main(argv) == 0
    step_dir = checkpoint.resolve(tmp_path / 'run')
    assert checkpoint.read_metadata(step_dir)['model_kwargs'] == KWARGS
    tree = checkpoint.restore_tree(step_dir)
    ema_vars = {'params': tree['ema_params'], 'batch_stats': tree['ema_batch_stats']}
    assert np.shape(ema_vars['params']['conv1']['kernel']) == (7, 7, 1, 64)
    assert np.shape(ema_vars['params']['fc']['kernel']) == (1024, 2)  # catavgmax: 2 x 512 features

    out = tmp_path / 'model.safetensors'
    capsys.readouterr()
    assert export_main(['--checkpoint', str(tmp_path / 'run'), '--use-ema', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert "global_pool='catavgmax', in_chans=1" in printed and 'input_size=(1, 32, 32)' in printed
    model = timm.create_model('resnet18', num_classes=2, checkpoint_path=str(out), **KWARGS).eval().to(DEVICE)
    x = np.random.RandomState(0).randn(4, 64, 64, 1).astype(np.float32)  # 2x2 final maps: max != avg
    ours = jax.jit(lambda v, x: create_model('resnet18', 2, **KWARGS).apply(v, x, train=False))(ema_vars, x)
    assert _max_rel_err(np.asarray(ours), _torch_forward(model, x)) <= 1e-5

    assert validate_main([str(tmp_path / 'ds'), '--checkpoint', str(tmp_path / 'run'), '--use-ema']) == 0
