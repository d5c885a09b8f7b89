"""Exact resume after SIGKILL, preemption by SIGTERM/Ctrl-C, atomic saves, the NaN guard, --no-resume-opt."""
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax_ema import checkpoint
from jax_ema.loop import SIGNAL_AT_UPDATE
from jax_ema.train import main, restore_state, train_step
from test_train import _batch, _image_folder, _state

# 2 classes x 10 images, batch 4: 5 updates per epoch, 10 in all; a recovery checkpoint every 2 updates.
# RandAugment (host) and random erasing (device) on: their draws must resume exactly too.
RUN = ['--model', 'resnet18', '--img-size', '32', '-b', '4', '--epochs', '2', '--warmup-epochs', '1',
       '--sched-on-updates', '--lr', '0.05', '--model-ema', '--model-ema-decay', '0.9', '--model-ema-warmup',
       '--recovery-interval', '2', '--log-interval', '1', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.25']


def _cli(argv, fault=None):
    """Run the trainer in a fresh process (sharing the tests' XLA cache); returns the CompletedProcess."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '',
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
    env.pop(SIGNAL_AT_UPDATE, None)
    if fault:
        env[SIGNAL_AT_UPDATE] = fault
    return subprocess.run([sys.executable, '-m', 'jax_ema.train', *argv], env=env, capture_output=True,
                          text=True, timeout=600)


def _assert_identical(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y), 'not bit-identical'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp('resume') / 'ds')


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('full')
    done = _cli([str(data), *RUN, '--output', str(out), '--experiment', 'run'])
    assert done.returncode == 0, done.stderr
    return checkpoint.restore_tree(checkpoint.resolve(out / 'run'))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(data, tmp_path, uninterrupted):
    killed = _cli([str(data), *RUN, '--output', str(tmp_path), '--experiment', 'run'], fault='7:KILL')
    assert killed.returncode == -9                                   # really killed, mid epoch 1
    last = checkpoint.resolve(tmp_path / 'run')
    assert int(last.name) == 6 and checkpoint.read_metadata(last)['position'] == 1
    resumed = _cli([str(data), *RUN, '--resume', str(tmp_path / 'run')])
    assert resumed.returncode == 0, resumed.stderr
    final = checkpoint.restore_tree(checkpoint.resolve(tmp_path / 'run'))
    assert int(final['step']) == 10
    _assert_identical(final, uninterrupted)                           # params, stats, optimizer, EMA, step


@pytest.mark.slow
@pytest.mark.parametrize('signal_name', ['TERM', 'INT'])
def test_preemption_saves_at_the_next_step_and_resumes_exactly(data, tmp_path, capsys, monkeypatch,
                                                               uninterrupted, signal_name):
    monkeypatch.setenv(SIGNAL_AT_UPDATE, f'3:{signal_name}')
    assert main([str(data), *RUN, '--output', str(tmp_path), '--experiment', 'run']) == 0
    out = capsys.readouterr().out
    assert f'Stopped by SIG{signal_name} at update 3' in out and f'--resume {tmp_path / "run"}' in out
    assert int(checkpoint.resolve(tmp_path / 'run').name) == 3
    monkeypatch.delenv(SIGNAL_AT_UPDATE)
    assert main([str(data), *RUN, '--resume', str(tmp_path / 'run')]) == 0
    _assert_identical(checkpoint.restore_tree(checkpoint.resolve(tmp_path / 'run')), uninterrupted)


def test_huge_lr_stops_with_a_clear_message_and_saves_nothing_non_finite(data, tmp_path, capsys):
    code = main([str(data), *RUN, '--lr', '1e12', '--warmup-epochs', '0', '--output', str(tmp_path),
                 '--experiment', 'run'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and 'NaN/Inf' in err and len(err.splitlines()) == 1 and 'Traceback' not in err
    ckpt_dir = tmp_path / 'run' / 'checkpoints'
    for step_dir in ckpt_dir.iterdir() if ckpt_dir.exists() else []:
        tree = checkpoint.restore_tree(step_dir)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree) if np.asarray(x).dtype.kind == 'f')


def test_a_failed_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    state = _state(None)
    manager = checkpoint.open_manager(tmp_path / 'checkpoints')
    good = checkpoint.save(manager, state, {'model': 'resnet18', 'num_classes': 3}, score=1.0)
    state = state.replace(step=state.step + 1)

    def failing_save(self, directory, *args, **kwargs):  # the fault: the write dies half way
        (directory / 'partial-file').write_bytes(b'half written')
        raise OSError('disk full (injected)')

    monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save', failing_save)
    with pytest.raises(Exception):
        checkpoint.save(manager, state, {'model': 'resnet18', 'num_classes': 3}, score=2.0)
    monkeypatch.undo()
    assert checkpoint.resolve(tmp_path) == good
    assert checkpoint.resolve(tmp_path / 'checkpoints' / 'best') == good
    restored, saved = checkpoint.restore_tree(good), checkpoint.state_tree(state.replace(step=state.step - 1))
    for key in ('params', 'batch_stats', 'step'):
        _assert_identical(restored[key], saved[key])


def test_no_resume_opt_keeps_weights_and_schedule_position_with_fresh_optimizer_state(tmp_path):
    trained = _state(None)
    step = jax.jit(lambda s, b: train_step(s, b, None, 0.1), donate_argnums=0)
    for i in range(3):
        trained, _ = step(trained, _batch(i))
    manager = checkpoint.open_manager(tmp_path / 'checkpoints')
    step_dir = checkpoint.save(manager, trained, {'model': 'resnet18', 'num_classes': 3, 'ema': None}, score=1.0)
    manager.close()
    fresh = _state(None, seed=1)
    restored = restore_state(step_dir, fresh, restore_opt=False)
    assert int(restored.step) == 3 and int(restored.opt_state.count) == 3       # the lr schedule goes on
    _assert_identical(restored.params, jax.device_get(trained.params))        # the weights are restored
    momentum = [x for x in jax.tree.leaves(restored.opt_state.inner_state) if np.ndim(x) > 1]
    assert momentum and all(float(np.abs(x).max()) == 0 for x in momentum)   # the optimizer starts afresh
    resumed = restore_state(step_dir, fresh)                                    # and with it: restored
    assert any(float(np.abs(x).max()) > 0 for x in jax.tree.leaves(resumed.opt_state.inner_state)
               if np.ndim(x) > 1)


def test_resume_refuses_a_missing_partial_or_other_model_checkpoint(data, tmp_path, capsys):
    argv = [str(data), *RUN, '--epochs', '1']
    for bad, words in ((tmp_path / 'nowhere', 'does not exist'), (tmp_path, 'no complete checkpoint')):
        assert main([*argv, '--resume', str(bad)]) == 2
        assert words in capsys.readouterr().err
    state = _state(None, num_classes=2)
    manager = checkpoint.open_manager(tmp_path / 'other' / 'checkpoints')
    checkpoint.save(manager, state, {'model': 'resnet34', 'num_classes': 2}, score=1.0)
    manager.close()
    assert main([*argv, '--resume', str(tmp_path / 'other')]) == 2
    assert 'resnet34' in capsys.readouterr().err
