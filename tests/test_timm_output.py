"""timm's output habits without a training run: --result's order, --device's platform choice, the log format."""

import logging
import subprocess
import sys

import pytest

from jax_ema import reporting
from jax_ema.cli import TimmFormatter


def _row(epoch, top1, loss):
    return dict(epoch=str(epoch), train_loss='1.5', eval_loss=str(loss), eval_top1=str(top1), eval_top5='100.0')


def test_result_lists_epochs_worst_to_best_as_timm():
    rows = [_row(0, 50.0, 0.9), _row(1, 70.0, 0.5), _row(2, 60.0, 0.7), _row(3, 70.0, 0.6)]
    by_top1 = reporting.timm_results(rows, 'top1')
    assert [r['epoch'] for r in by_top1] == [0, 2, 1, 3]  # ascending top-1, ties in epoch order: best last
    assert by_top1[0] == {'epoch': 0, 'train': {'loss': 1.5}, 'validation': {'loss': 0.9, 'top1': 50.0, 'top5': 100.0}}
    assert [r['epoch'] for r in reporting.timm_results(rows, 'loss')] == [0, 2, 3, 1]  # descending loss
    assert [r['epoch'] for r in reporting.timm_results(rows, 'top1', keep=2)] == [1, 3]  # timm's [-10:]


def test_info_is_the_message_alone_and_warnings_are_named():
    def line(level):
        return TimmFormatter().format(logging.LogRecord('jax_ema.train', level, '', 0, 'Train: %d', (3,), None))

    assert line(logging.INFO) == 'Train: 3' and line(logging.WARNING) == 'WARNING: Train: 3'


DEVICE_CHECK = """
import jax
from jax_ema import device
from jax_ema.errors import UserError
device.select('{asked}')
try:
    device.check('{asked}')
    print('ok', jax.default_backend())
except UserError as e:
    print('error:', e)
import jax.numpy as jnp
print('then', jax.default_backend(), int(jnp.ones(2).sum()))  # JAX still works, on what it had
"""


@pytest.mark.slow  # a fresh process each: JAX's platform is chosen before it starts
@pytest.mark.parametrize('asked,expected', [('cpu', 'ok cpu'), ('tpu', 'error: --device tpu: JAX cannot start tpu')])
def test_device_picks_the_platform_before_jax_starts(asked, expected):
    done = subprocess.run(
        [sys.executable, '-c', DEVICE_CHECK.format(asked=asked)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith(expected), done.stdout + done.stderr[-2000:]
    assert done.stdout.rstrip().endswith('then cpu 2')  # a failed --device leaves JAX working on what it had


def test_started_is_read_without_jax_private_helper(monkeypatch):
    import jax
    from jax._src import xla_bridge

    from jax_ema import device

    jax.devices()  # started in this process
    assert device._started()  # pylint: disable=protected-access
    monkeypatch.delattr(xla_bridge, 'backends_are_initialized')  # a jax that dropped it: its table of backends
    assert device._started()  # pylint: disable=protected-access
