"""Exact resume after SIGKILL at every point of a save, preemption by SIGTERM/Ctrl-C (an epoch's last update
included), records that agree with the checkpoints after any kill, where a resumed run writes, data changed
between runs, a full disk, atomic saves, the NaN guard, --no-resume-opt."""

import json
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from cli_output import error_line, log_lines
from jax_ema import checkpoint, faults, reporting
from jax_ema.train import main, restore_state, train_step
from read_only import read_only
from test_train import _batch, _image_folder, _state

# 2 classes x 10 images, batch 4: 5 updates per epoch, 10 in all; a recovery checkpoint every 2 updates.
# RandAugment (host) and random erasing (device) on: their draws must resume exactly too.
RUN = [
    '--model',
    'resnet18',
    '--img-size',
    '32',
    '-b',
    '4',
    '--epochs',
    '2',
    '--warmup-epochs',
    '1',
    '--sched-on-updates',
    '--lr',
    '0.05',
    '--model-ema',
    '--model-ema-decay',
    '0.9',
    '--model-ema-warmup',
    '--recovery-interval',
    '2',
    '--log-interval',
    '1',
    '--aa',
    'rand-m9-mstd0.5',
    '--reprob',
    '0.25',
]


def _cli(argv, fault=None):
    """Run the trainer in a fresh process (sharing the tests' XLA cache) with the fault hook `fault`
    (faults.py: 'POINT@STEP:ACTION'); returns the CompletedProcess."""
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or '',
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )
    env.pop(faults.SIGNAL_AT_UPDATE, None)
    env.pop(faults.FAULT, None)
    if fault:
        env[faults.FAULT] = fault
    return subprocess.run(
        [sys.executable, '-m', 'jax_ema.train', *argv], env=env, capture_output=True, text=True, timeout=600
    )


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
    """The run killed nowhere: its folder, final state tree, summary rows and results."""
    out = tmp_path_factory.mktemp('full')
    done = _cli([str(data), *RUN, '--output', str(out), '--experiment', 'run'])
    assert done.returncode == 0, done.stderr
    run = out / 'run'
    return types.SimpleNamespace(
        run=run,
        tree=checkpoint.restore_tree(checkpoint.resolve(run)),
        rows=reporting.read_summary(run),
        results=json.loads((run / 'results.json').read_text()),
    )


def _assert_same_records(run, reference, epochs=('0', '1')):
    """summary.csv, results.json and the best checkpoint of `run` are those of the uninterrupted run: the same
    epochs once each, the same validation numbers to the bit; the train loss of an epoch cut by a resume is
    summed from both parts. No temporary file or folder is left."""
    rows, want = reporting.read_summary(run), [r for r in reference.rows if r['epoch'] in epochs]
    assert [r['epoch'] for r in rows] == list(epochs)
    for row, ref in zip(rows, want):
        assert {k: v for k, v in row.items() if k != 'train_loss'} == {
            k: v for k, v in ref.items() if k != 'train_loss'
        }
        assert float(row['train_loss']) == pytest.approx(float(ref['train_loss']), rel=1e-5)
    results = json.loads((run / 'results.json').read_text())
    assert {k: results[k] for k in ('best_metric', 'best_epoch', 'final')} == {
        k: reference.results[k] for k in ('best_metric', 'best_epoch', 'final')
    }
    assert (
        checkpoint.resolve(run / 'checkpoints' / 'best').name
        == checkpoint.resolve(reference.run / 'checkpoints' / 'best').name
    )
    leftovers = [p.name for p in run.rglob('*') if 'tmp' in p.name and p.name != 'tmp']
    assert not leftovers, leftovers


# Each kill leaves (latest checkpoint, summary.csv's epochs on disk); the next run resumes from there.
KILLS = [
    ('save:before@4:KILL', '2', None),  # recovery save 4 about to start
    ('save:write@5:KILL', '4', None),  # epoch 0's save killed half written
    ('save:after-checkpoint@5:KILL', '5', None),  # epoch 0 saved, its row not yet written
    ('epoch-end:before-validate@10:KILL', '8', ['0']),  # the row restored from checkpoint 5
    ('save:after-summary@10:KILL', '10', ['0', '1']),
]  # results.json not yet rewritten


@pytest.mark.slow
def test_sigkill_at_every_point_of_a_save_then_resume_keeps_weights_and_records(data, tmp_path, uninterrupted):
    run = tmp_path / 'run'
    for i, (fault, latest, epochs) in enumerate(KILLS):
        argv = (
            [str(data), *RUN, '--output', str(tmp_path), '--experiment', 'run']
            if i == 0
            else [str(data), *RUN, '--resume', str(run)]
        )
        killed = _cli(argv, fault)
        assert killed.returncode == -9, killed.stderr[-3000:]  # really killed, where the hook says
        assert checkpoint.resolve(run).name == latest, fault
        on_disk = [r['epoch'] for r in reporting.read_summary(run)] if (run / 'summary.csv').exists() else None
        assert on_disk == epochs, fault
    assert checkpoint.read_metadata(run / 'checkpoints' / '5')['summary'][0]['epoch'] == 0  # the truth, saved first
    resumed = _cli([str(data), *RUN, '--resume', str(run)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = checkpoint.restore_tree(checkpoint.resolve(run))
    assert int(final['step']) == 10
    _assert_identical(final, uninterrupted.tree)  # params, stats, optimizer, EMA, step
    _assert_same_records(run, uninterrupted)
    started = yaml.safe_load((run / 'args.yaml').read_text())  # the settings the run started with
    assert started['resume'] is None and started['experiment'] == 'run'
    resumes = [yaml.safe_load((run / f'args-resume-{n}.yaml').read_text()) for n in range(1, len(KILLS) + 1)]
    assert all(r['resume'] == str(run) for r in resumes) and not (run / f'args-resume-{len(KILLS) + 1}.yaml').exists()
    holder = json.loads((run / '.lock').read_text())  # a killed holder leaves no stale lock
    assert holder['pid'] != os.getpid() and set(holder) == {'pid', 'host', 'started'}


@pytest.mark.slow
@pytest.mark.parametrize('signal_name,update', [('TERM', 5), ('INT', 3)])
def test_preemption_saves_at_the_next_step_and_resumes_exactly(
    data, tmp_path, capsys, monkeypatch, uninterrupted, signal_name, update
):
    """SIGTERM on epoch 0's last update stops before its validation: the resume validates it (its row, its
    chance to be the best checkpoint) before going on; Ctrl-C mid epoch resumes from there."""
    monkeypatch.setenv(faults.FAULT, f'update@{update}:{signal_name}')
    assert main([str(data), *RUN, '--output', str(tmp_path), '--experiment', 'run']) == 0
    out = capsys.readouterr().out
    assert f'Stopped by SIG{signal_name} at update {update}' in out and f'--resume {tmp_path / "run"}' in out
    assert int(checkpoint.resolve(tmp_path / 'run').name) == update
    assert not (tmp_path / 'run' / 'summary.csv').exists()  # no epoch was validated
    monkeypatch.delenv(faults.FAULT)
    assert main([str(data), *RUN, '--resume', str(tmp_path / 'run')]) == 0
    _assert_identical(checkpoint.restore_tree(checkpoint.resolve(tmp_path / 'run')), uninterrupted.tree)
    _assert_same_records(tmp_path / 'run', uninterrupted)
    assert checkpoint.read_metadata(tmp_path / 'run' / 'checkpoints' / '5')['score'] is not None


@pytest.mark.slow
def test_an_older_checkpoint_resumes_only_into_a_new_folder_and_the_source_is_never_written(
    data, tmp_path, capsys, uninterrupted
):
    older = uninterrupted.run / 'checkpoints' / '5'
    with read_only(uninterrupted.run):  # any write there would fail
        for where in ([], ['--output', str(uninterrupted.run.parent), '--experiment', 'run']):
            assert main([str(data), *RUN, '--resume', str(older), *where]) == 2
            err = error_line(capsys.readouterr().err)
            assert 'is not the latest checkpoint of its run (that is update 10)' in err
            assert 'add --experiment NAME' in err
        assert main([str(data), *RUN, '--resume', str(older), '--output', str(tmp_path), '--experiment', 'branch']) == 0
    branch = tmp_path / 'branch'
    _assert_identical(checkpoint.restore_tree(checkpoint.resolve(branch)), uninterrupted.tree)  # epoch 1 again
    assert [r['epoch'] for r in reporting.read_summary(branch)] == ['1']  # the epochs this folder ran
    assert yaml.safe_load((branch / 'args.yaml').read_text())['resume'] == str(older)


@pytest.mark.slow
def test_changed_data_goes_on_from_the_next_epoch_sliced_anew(data, tmp_path, monkeypatch, capsys):
    images = shutil.copytree(data, tmp_path / 'ds')
    argv = [*RUN, '--epochs', '3', '--recovery-interval', '0']
    monkeypatch.setenv(faults.FAULT, 'update@6:TERM')  # epoch 1, after 1 of its 5 updates
    assert main([str(images), *argv, '--output', str(tmp_path), '--experiment', 'run']) == 0
    monkeypatch.delenv(faults.FAULT)
    (images / 'train' / 'cat' / '0.png').unlink()  # 19 images: 4 updates per epoch
    capsys.readouterr()
    assert main([str(images), *argv, '--resume', str(tmp_path / 'run')]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if 'changed since' in line]  # the CLI's log
    assert len(warned) == 1 and warned[0].startswith(
        'WARNING: The training data (20 -> 19 images) and the updates per epoch (5 -> 4) changed since'
    )
    assert 'going on from the start of epoch 2: update 8, at 4 updates per epoch' in warned[0]
    last = checkpoint.resolve(tmp_path / 'run')
    tree = checkpoint.restore_tree(last)
    assert last.name == '12' and int(tree['step']) == 12 and int(tree['opt_state']['count']) == 12
    assert checkpoint.read_metadata(last)['data']['train']['count'] == 19
    assert [r['epoch'] for r in reporting.read_summary(tmp_path / 'run')] == ['0', '2']


@pytest.mark.slow  # ~5-10 s: the fast loop stays under 3 minutes
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(faults.FAULT, 'save:write@5:ENOSPC')  # epoch 0's save, half written
    with log_lines() as logged:
        assert main([str(data), *RUN, '--output', str(tmp_path), '--experiment', 'run']) == 2
    err = capfd.readouterr().err  # also what C++ would write: nothing but the log and the error line
    previous = tmp_path / 'run' / 'checkpoints' / '4'
    assert error_line(err, logged) == (
        f"error: cannot save checkpoint 5 in '{previous.parent}' (No space left on device); the previous "
        f"checkpoint '{previous}' is intact: free some space, then resume with --resume "
        f"'{tmp_path / 'run'}'"
    )
    assert checkpoint.resolve(tmp_path / 'run') == previous
    assert int(checkpoint.restore_tree(previous)['step']) == 4
    assert not (tmp_path / 'run' / 'summary.csv').exists()  # no row without its checkpoint


@pytest.mark.slow  # ~5-10 s: the fast loop stays under 3 minutes
def test_huge_lr_stops_with_a_clear_message_and_saves_nothing_non_finite(data, tmp_path, capsys):
    code = main(
        [str(data), *RUN, '--lr', '1e12', '--warmup-epochs', '0', '--output', str(tmp_path), '--experiment', 'run']
    )
    assert code == 2 and 'NaN/Inf' in error_line(capsys.readouterr().err)
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
    with pytest.raises(Exception):  # noqa: B017 (whatever orbax wraps the injected OSError in)
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
    assert int(restored.step) == 3 and int(restored.opt_state.count) == 3  # the lr schedule goes on
    _assert_identical(restored.params, jax.device_get(trained.params))  # the weights are restored
    momentum = [x for x in jax.tree.leaves(restored.opt_state.inner_state) if np.ndim(x) > 1]
    assert momentum and all(float(np.abs(x).max()) == 0 for x in momentum)  # the optimizer starts afresh
    resumed = restore_state(step_dir, fresh)  # and with it: restored
    assert any(float(np.abs(x).max()) > 0 for x in jax.tree.leaves(resumed.opt_state.inner_state) if np.ndim(x) > 1)


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
