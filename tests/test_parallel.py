"""Data parallel on a device mesh: 8 (fake CPU) devices give what 1 device gives on the same global batch."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jax_ema import checkpoint
from jax_ema.loop import SIGNAL_AT_UPDATE

pytestmark = pytest.mark.slow  # 8-device runs in subprocesses

# 20 training images, global batch 8: 2 updates per epoch, 10 in all; SGD, EMA with warmup. The images
# are noise that 10 steps cannot fit: on a learnable set the loss reaches label smoothing's floor, the
# gradients become rounding-level sums, and float32 reduction-order differences (1e-7 after a step)
# grow tenfold per step -- training chaos that the same 1-device run shows under any perturbation.
RUN = [
    '--model',
    'resnet18',
    '--img-size',
    '32',
    '--epochs',
    '5',
    '--warmup-epochs',
    '0',
    '--lr',
    '0.01',
    '--model-ema',
    '--model-ema-decay',
    '0.9',
    '--model-ema-warmup',
    '--log-interval',
    '1',
]


def device_env(devices: int) -> dict:
    """The environment of a trainer process with `devices` CPU devices, sharing the tests' XLA cache.
    On a loaded CPU one device thread can reach a collective late; XLA's default 40 s would abort."""
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '',
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
        '--xla_cpu_collective_call_terminate_timeout_seconds=600',
    )
    env.pop(SIGNAL_AT_UPDATE, None)
    return env


def _train(data, out, devices, per_device_batch, extra=()):
    done = subprocess.run(
        [
            sys.executable,
            '-m',
            'jax_ema.train',
            str(data),
            *RUN,
            '-b',
            str(per_device_batch),
            '--output',
            str(out),
            '--experiment',
            'run',
            *extra,
        ],
        env=device_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return checkpoint.restore_tree(checkpoint.resolve(out / 'run'))


def noise_folder(root, train_per_class=10, validation_per_class=10):
    """Two classes of noise images (40 px) in train/ and validation/."""
    rng = np.random.default_rng(0)
    for split, count in (('train', train_per_class), ('validation', validation_per_class)):
        for name in ('a', 'b'):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 40, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f'{i}.png')
    return root


def assert_close(expected, actual, tol=1e-5, keys=('params', 'batch_stats', 'ema_params', 'ema_batch_stats')):
    """Every tensor of `actual` within tol x the largest value of its group (params, ...) in `expected`.

    Relative to the largest value of each group (as the float32 parity bounds): a per-tensor scale is
    meaningless for tensors at rounding level, e.g. layer4_1.bn1.bias stays ~2e-6 (its gradients are
    near-cancelling sums), where the 8-device reduction order alone changes it by 2e-7.
    """
    for key in keys:
        pairs = zip(jax.tree_util.tree_flatten_with_path(expected[key])[0], jax.tree.leaves(actual[key]), strict=True)
        scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(expected[key]))
        for (path, a), b in pairs:
            err = float(np.max(np.abs(np.asarray(a, np.float64) - b))) / scale
            assert err <= tol, f'{key}{jax.tree_util.keystr(path)}: error {err:.3g} x max|{key}|'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return noise_folder(tmp_path_factory.mktemp('parallel') / 'ds')


@pytest.fixture(scope='module')
def one_device(data, tmp_path_factory):
    return _train(data, tmp_path_factory.mktemp('one'), devices=1, per_device_batch=8)


@pytest.mark.parametrize('extra', [(), ('--model-ema-force-cpu',)], ids=['device_ema', 'host_ema'])
def test_eight_devices_match_one_device_after_ten_steps(data, tmp_path, one_device, extra):
    eight = _train(data, tmp_path, devices=8, per_device_batch=1, extra=extra)
    assert int(eight['step']) == int(one_device['step']) == 10
    assert_close(one_device, eight)
