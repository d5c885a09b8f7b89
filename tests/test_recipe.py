"""timm's published mobilenetv3_large_100 command runs unchanged apart from the program name, with only
--epochs, -b and --img-size reduced (issue 6): one short epoch on a small image folder."""

import json
import shlex

import pytest

from jax_ema.config import parse_args
from jax_ema.train import main
from tests.test_train import _image_folder

# From timm's docs (training scripts, "MobileNetV3-Large-100"), after `./distributed_train.sh 2 /imagenet/`.
RECIPE = (
    '--model mobilenetv3_large_100 -b 512 --sched step --epochs 600 --decay-epochs 2.4 --decay-rate .973 '
    '--opt rmsproptf --opt-eps .001 -j 7 --warmup-lr 1e-6 --weight-decay 1e-5 --drop 0.2 --drop-path 0.2 '
    '--model-ema --model-ema-decay 0.9999 --aa rand-m9-mstd0.5 --remode pixel --reprob 0.2 --amp --lr .064 '
    '--lr-noise 0.42 0.9'
)
REDUCED = {'-b': '4', '--epochs': '1'}


def _reduced_argv(data, out):
    argv = shlex.split(RECIPE)
    for flag, value in REDUCED.items():
        argv[argv.index(flag) + 1] = value
    return [str(data), *argv, '--img-size', '32', '--output', str(out), '--experiment', 'recipe']


def test_recipe_flags_mean_what_they_mean_in_timm(tmp_path):
    config = parse_args(_reduced_argv(tmp_path, tmp_path / 'out'))
    assert (config.model, config.sched, config.decay_epochs, config.decay_rate) == (
        'mobilenetv3_large_100',
        'step',
        2.4,
        0.973,
    )
    assert (config.opt, config.opt_eps, config.workers, config.warmup_lr, config.weight_decay) == (
        'rmsproptf',
        0.001,
        7,
        1e-6,
        1e-5,
    )
    assert (config.drop, config.drop_path, config.model_ema, config.model_ema_decay) == (0.2, 0.2, True, 0.9999)
    assert (config.aa, config.remode, config.reprob, config.amp, config.lr, tuple(config.lr_noise)) == (
        'rand-m9-mstd0.5',
        'pixel',
        0.2,
        True,
        0.064,
        (0.42, 0.9),
    )


@pytest.mark.slow
def test_recipe_runs_one_short_epoch(tmp_path, capsys):
    data = _image_folder(tmp_path / 'ds', per_class=4)
    assert main(_reduced_argv(data, tmp_path / 'out')) == 0
    assert json.loads(capsys.readouterr().out.split('--result')[1])[0]['epoch'] == 0  # timm's list
    results = json.loads((tmp_path / 'out' / 'recipe' / 'results.json').read_text())
    assert results['ema']['decay'] == 0.9999
    assert 0.0 <= results['final']['ema']['top1'] <= 100.0
    assert (tmp_path / 'out' / 'recipe' / 'summary.csv').exists()
