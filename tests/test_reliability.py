"""The pieces that keep a run folder consistent, without training: the fault hooks, the run lock, where a
resumed run writes, the data fingerprint and the realigned resume, the record files, the checkpoint policy
across sessions, and the short-run EMA warning. (Whole runs killed and resumed: tests/test_resume.py.)"""

import errno
import json
import logging
import os
import re
import signal
import socket
import types
from pathlib import Path

import numpy as np
import pytest

from jax_ema import checkpoint, data_fingerprint, ema, faults, optim, reporting, run_dir, train
from jax_ema.errors import UserError
from jax_ema.records import resume_position
from test_train import _state

# --- faults -------------------------------------------------------------------------------------------


def test_fault_hooks_fire_at_their_point_and_step_only(monkeypatch):
    monkeypatch.setenv(faults.FAULT, 'save:write@5:ENOSPC, save:after-summary:EROFS')
    faults.hit('save:write', 4)
    faults.hit('save:before', 5)
    with pytest.raises(OSError) as full:
        faults.hit('save:write', 5)
    assert full.value.errno == errno.ENOSPC and full.value.strerror == 'No space left on device'
    with pytest.raises(OSError) as read_only:
        faults.hit('save:after-summary', 123)  # no @STEP: wherever it is reached
    assert read_only.value.errno == errno.EROFS


def test_fault_hooks_send_signals_and_read_the_older_variable(monkeypatch):
    got = []
    monkeypatch.setattr(os, 'kill', lambda pid, sig: got.append((pid, sig)))
    monkeypatch.setenv(faults.SIGNAL_AT_UPDATE, '7:TERM')
    monkeypatch.setenv(faults.FAULT, 'epoch-end:before-validate@10:KILL')
    faults.hit('update', 6)
    faults.hit('update', 7)
    faults.hit('epoch-end:before-validate', 10)
    assert got == [(os.getpid(), signal.SIGTERM), (os.getpid(), signal.SIGKILL)]


@pytest.mark.parametrize('spec', ['save:writ@5:KILL', 'save:write@five:KILL', 'update@3:HUP', 'update@3'])
def test_a_fault_that_could_never_fire_is_refused(monkeypatch, spec):
    monkeypatch.setenv(faults.FAULT, spec)
    with pytest.raises(ValueError, match='is not POINT'):
        faults.hit('update', 3)


# --- the run lock and where a run writes ---------------------------------------------------------------


def test_one_writer_per_run_folder_and_the_line_names_the_holder(tmp_path):
    with run_dir.RunLock(tmp_path) as lock:
        written = json.loads((tmp_path / '.lock').read_text())
        assert written == lock.holder and written['pid'] == os.getpid() and written['host'] == socket.gethostname()
        with pytest.raises(UserError) as busy:
            run_dir.RunLock(tmp_path)  # flock: even a second open file of ours
        assert (
            f"run folder '{tmp_path}' is in use by another trainer (pid {os.getpid()} on host "
            f'{socket.gethostname()}, started {written["started"]})'
        ) in str(busy.value)
    run_dir.RunLock(tmp_path).release()  # released: free again


def _fake_run(root, steps):
    """A run folder with empty step folders (state/ and metadata/) at `steps`."""
    for step in steps:
        (root / 'checkpoints' / str(step) / 'state').mkdir(parents=True)
        (root / 'checkpoints' / str(step) / 'metadata').write_text(json.dumps({'step': step}))
    return root


def test_where_a_resumed_run_writes(tmp_path):
    source = _fake_run(tmp_path / 'out' / 'run', (5, 10))
    latest, older = source / 'checkpoints' / '10', source / 'checkpoints' / '5'
    out = str(tmp_path / 'out')
    assert run_dir.choose(out, '', 'resnet18', 32, latest) == source  # goes on in its folder
    assert run_dir.choose(out, 'run', 'resnet18', 32, latest) == source  # --experiment is the source
    assert run_dir.choose(out, 'other', 'resnet18', 32, older) == tmp_path / 'out' / 'other'  # a new one
    assert run_dir.choose(out, 'other', 'resnet18', 32, latest) == tmp_path / 'out' / 'other-1'  # never reused
    for experiment in ('', 'run'):
        with pytest.raises(
            UserError,
            match=r'not the latest checkpoint of its run \(that is update 10\).*'
            'add --experiment NAME',
        ):
            run_dir.choose(out, experiment, 'resnet18', 32, older)
    assert run_dir.goes_on(source, latest) and not run_dir.goes_on(tmp_path / 'out' / 'other', latest)
    bare = _fake_run(tmp_path / 'loose', (3,)) / 'checkpoints' / '3'
    bare.rename(tmp_path / 'step3')  # a step folder outside any run
    new = run_dir.choose(out, '', 'resnet18', 32, tmp_path / 'step3')
    assert new.parent == tmp_path / 'out' and new.name.endswith('-resnet18-32')


def test_a_run_that_went_on_meanwhile_is_not_resumed_twice(tmp_path):
    source = _fake_run(tmp_path / 'run', (5,))
    run_dir.check_still_latest(source, source / 'checkpoints' / '5')
    _fake_run(source, (8,))  # saved by another process meanwhile
    with pytest.raises(UserError, match='went on to update 8 while this run was starting from update 5'):
        run_dir.check_still_latest(source, source / 'checkpoints' / '5')


# --- the data fingerprint and the realigned resume -----------------------------------------------------


def test_the_data_fingerprint_sees_files_sizes_and_classes_not_where_the_folder_is(tmp_path):
    def files(root, names):
        for name, size in names.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b'x' * size)
        return [str(root / n) for n in names]

    names = {'cat/1.png': 10, 'cat/2.png': 11, 'dog/1.png': 12}
    labels = [0, 0, 1]
    base = data_fingerprint.fingerprint(
        ('cat', 'dog'), {'train': (labels, data_fingerprint.file_entries(files(tmp_path / 'a', names)))}
    )
    moved = data_fingerprint.fingerprint(
        ('cat', 'dog'), {'train': (labels, data_fingerprint.file_entries(files(tmp_path / 'b', names)[::-1]))}
    )
    assert moved == base and base['train']['per_class'] == [2, 1]
    resized = data_fingerprint.fingerprint(
        ('cat', 'dog'),
        {'train': (labels, data_fingerprint.file_entries(files(tmp_path / 'c', dict(names, **{'dog/1.png': 13}))))},
    )
    assert data_fingerprint.changes(base, resized, 'train') == ['the file names or sizes']
    fewer = data_fingerprint.fingerprint(
        ('cat', 'dog'),
        {'train': ([0, 1], data_fingerprint.file_entries(files(tmp_path / 'd', {'cat/1.png': 10, 'dog/1.png': 12})))},
    )
    assert data_fingerprint.changes(base, fewer, 'train') == ['3 -> 2 images']
    renamed = dict(base, classes=['cat', 'wolf'])
    assert data_fingerprint.changes(base, renamed, 'train') == ['the class names']
    assert data_fingerprint.changes(None, base, 'train') == []  # a checkpoint from before fingerprints


def _run(batch_size, updates_per_epoch):
    train_ds = types.SimpleNamespace(restore_unreadable=lambda found, epoch, step: None)  # no unreadable images
    return types.SimpleNamespace(batch_size=batch_size, updates_per_epoch=updates_per_epoch, train_ds=train_ds)


def test_another_global_batch_realigns_the_resume_to_the_next_epoch(caplog):
    state = _state(None).replace(step=np.int32(6))
    state = state.replace(opt_state=optim.at_step(state.opt_state, 6))
    fingerprint = {
        'classes': ['a'],
        'train': {'count': 20, 'per_class': [20], 'sha256': 'x'},
        'validation': {'count': 4, 'per_class': [4], 'sha256': 'y'},
    }
    meta = dict(epoch=1, position=1, global_batch_size=4, data=fingerprint, train_loss_partial={'sum': 1, 'count': 1})
    with caplog.at_level(logging.WARNING, logger='jax_ema.train'):
        same, carried = resume_position(_run(4, 5), state, meta, fingerprint, 'CKPT')
        assert int(same.step) == 6 and carried == {'sum': 1, 'count': 1}  # nothing changed
        moved, carried = resume_position(_run(8, 2), state, meta, fingerprint, 'CKPT')  # -b doubled: 2 per epoch
    assert int(moved.step) == 4 and int(moved.opt_state.count) == 4 and carried is None  # epoch 2 of 2 updates
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        'The global batch (4 -> 8) changed since CKPT; going on from the start of epoch 2: update 4, '
        'at 2 updates per epoch (the lr schedule and the EMA step set there too)'
    ]


# --- the record files ---------------------------------------------------------------------------------


def test_records_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    rows = [reporting.summary_row(e, 1.0, 0.1, {'loss': 1.0, 'top1': 50.0, 'top5': 90.0}, None) for e in range(2)]
    reporting.write_summary(tmp_path, rows)
    before = (tmp_path / 'summary.csv').read_text()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'replace', full_disk)
    with pytest.raises(UserError) as info:
        reporting.write_summary(tmp_path, rows + [dict(rows[0], epoch=2)])
    assert f"cannot write '{tmp_path / 'summary.csv'}' (No space left on device)" in str(info.value)
    assert 'resume with --resume' in str(info.value)
    assert (tmp_path / 'summary.csv').read_text() == before and sorted(os.listdir(tmp_path)) == ['summary.csv']


def test_args_keep_the_settings_a_run_started_with(tmp_path):
    from jax_ema.config import Config

    assert reporting.write_args(tmp_path, Config(lr=0.1)).name == 'args.yaml'
    assert reporting.write_args(tmp_path, Config(lr=0.2, resume='RUN')).name == 'args-resume-1.yaml'
    assert reporting.write_args(tmp_path, Config(lr=0.3, resume='RUN')).name == 'args-resume-2.yaml'
    assert 'lr: 0.1' in (tmp_path / 'args.yaml').read_text()


def test_summary_rows_come_from_the_checkpoint_else_are_trimmed_as_timm_does(tmp_path):
    rows = [reporting.summary_row(e, 1.0, 0.1, {'loss': 1.0, 'top1': 50.0, 'top5': 90.0}, None) for e in range(3)]
    reporting.write_summary(tmp_path, rows + [rows[1]])  # epochs 0 1 2 1 on disk
    assert [r['epoch'] for r in reporting.rows_at_checkpoint(tmp_path, {'summary': rows[:2]}, 2)] == [0, 1]
    legacy = reporting.rows_at_checkpoint(tmp_path, {}, 1)  # no rows recorded: trim
    assert [r['epoch'] for r in legacy] == ['0']


# --- checkpoints kept across sessions -------------------------------------------------------------------


def _tree(step):
    return {'step': np.int32(step), 'params': {'w': np.full(3, step, np.float32)}, 'batch_stats': {}, 'opt_state': {}}


def test_the_best_checkpoints_survive_a_resume(tmp_path):
    with checkpoint.open_manager(tmp_path, keep_best=2) as manager:
        for step, score in ((5, 1.0), (8, 3.0), (10, 2.0), (12, None)):
            checkpoint.save_tree(manager, _tree(step), {}, score)
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == [8, 10, 12]
    with checkpoint.open_manager(tmp_path, keep_best=2) as manager:  # a new session
        checkpoint.save_tree(manager, _tree(15), {}, 0.5)  # a worse epoch
        checkpoint.save_tree(manager, _tree(16), {}, None)
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == [8, 10, 16]  # the best two kept
    assert checkpoint.resolve(tmp_path / 'best').name == '8'


def test_a_full_disk_in_a_save_leaves_no_partial_folder_and_names_the_intact_one(tmp_path, monkeypatch, capfd):
    with checkpoint.open_manager(tmp_path / 'checkpoints') as manager:
        checkpoint.save_tree(manager, _tree(4), {}, None)
        monkeypatch.setenv(faults.FAULT, 'save:write@6:ENOSPC')
        with pytest.raises(UserError) as info:
            checkpoint.save_tree(manager, _tree(6), {}, 1.0)
    assert str(info.value) == (
        f"cannot save checkpoint 6 in '{tmp_path / 'checkpoints'}' (No space left on device); "
        f"the previous checkpoint '{tmp_path / 'checkpoints' / '4'}' is intact: free some "
        f"space, then resume with --resume '{tmp_path}'"
    )
    assert checkpoint.resolve(tmp_path).name == '4' and capfd.readouterr().err == ''


def test_os_errors_are_found_behind_orbax_wrappers():
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.w/0": Failed to write 516096 bytes to '
        "file 14: No space left on device [os_error_code='28']"
    )
    assert checkpoint.os_reason(tensorstore) == 'No space left on device'
    chained = RuntimeError('save failed')
    chained.__cause__ = PermissionError(errno.EROFS, 'Read-only file system')
    assert checkpoint.os_reason(chained) == 'Read-only file system'
    assert checkpoint.os_reason(ValueError('Shape mismatch')) is None


# --- the short-run EMA warning -------------------------------------------------------------------------


@pytest.mark.parametrize('updates,decay', [(10, '0.5'), (1000, '0.99'), (20_000, '0.9995')])
def test_the_short_run_warning_suggests_a_decay_that_keeps_an_ema(updates, decay, caplog):
    with caplog.at_level(logging.WARNING, logger='jax_ema.train'):
        train._warn_ema_horizon(ema.EmaConfig(decay=0.99999), updates)
    message = caplog.records[-1].getMessage()
    assert f'--model-ema-decay {decay} ' in message and '--model-ema-warmup' in message
    assert '--model-ema-decay 0 ' not in message and '(e.g. 0)' not in message


def test_the_reliability_page_names_every_fault_point_and_only_tests_that_exist():
    tests = Path(__file__).resolve().parent
    page = (tests.parent / 'docs' / 'reliability.md').read_text()
    assert all(f'`{point}`' in page for point in faults.POINTS)
    cited = set(re.findall(r'`(test_\w+)', page))
    defined = {
        name for path in tests.glob('test_*.py') for name in re.findall(r'^def (test_\w+)', path.read_text(), re.M)
    }
    assert len(cited) >= 15 and cited <= defined, sorted(cited - defined)
