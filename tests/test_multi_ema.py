"""Several EMAs in one run (issue 8), end to end: stacked decays + power-function EMAs trained by the CLI,
summary.csv / results.json / checkpoint metadata naming the best member, snapshots -> posthoc -> validate,
validate/export --ema-index, an exact resume of a stacked run, and the host placement of a stack."""

import csv
import functools
import json

import jax
import numpy as np
import pytest
import safetensors.numpy

from jax_ema import checkpoint, ema, offload, plot, posthoc, reporting
from jax_ema.convert import to_timm
from jax_ema.epoch_end import evaluate_members
from jax_ema.errors import UserError
from jax_ema.export import export
from jax_ema.loop import SIGNAL_AT_UPDATE
from jax_ema.train import main, train_step
from jax_ema.validate import validate
from test_resume import _assert_identical
from test_train import _batch, _image_folder, _state

pytestmark = pytest.mark.slow  # a 2-epoch CLI run of four EMAs shared by the module, and its resume

# 2 classes x 10 images, batch 4: 5 updates per epoch, 10 in all; snapshots at updates 3, 6, 9 and 10.
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
    '0.6',
    '0.9',
    '--model-ema-std',
    '0.05',
    '0.1',
    '--model-ema-snapshot-every',
    '3',
    '--log-interval',
    '5',
]
NAMES = ['decay 0.6', 'decay 0.9', 'std 0.05', 'std 0.1']
PREFIXES = ['ema', 'ema1', 'ema2', 'ema3']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return _image_folder(tmp_path_factory.mktemp('multi') / 'ds')


@pytest.fixture(scope='module')
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    assert main([str(data), *RUN, '--output', str(out), '--experiment', 'run']) == 0
    return out / 'run'


def _rows(run_dir):
    with (run_dir / 'summary.csv').open() as f:
        return list(csv.DictReader(f))


def test_every_member_is_validated_and_the_best_one_wins(run):
    rows = _rows(run)
    extra = [f'ema{i}_eval_{k}' for i in (1, 2, 3) for k in ('loss', 'top1', 'top5')]
    assert list(rows[0]) == [*reporting.SUMMARY_COLUMNS, *extra] and len(rows) == 2
    assert all(r['eval_top1'] == r['ema_eval_top1'] for r in rows)  # timm's column: the first decay
    results = json.loads((run / 'results.json').read_text())
    assert results['ema_decays'] == [0.6, 0.9] and results['ema_stds'] == [0.05, 0.1]
    # the winner by hand: highest top-1 over epochs and members, the earliest epoch and first member on ties
    candidates = [(float(r[f'{p}_eval_top1']), -int(r['epoch']), -i) for r in rows for i, p in enumerate(PREFIXES)]
    top1, neg_epoch, neg_index = max(candidates)
    assert results['best_metric'] == top1 and results['best_epoch'] == -neg_epoch
    assert results['best_ema_index'] == -neg_index
    winner = results['best_ema']
    assert winner['index'] == -neg_index and NAMES[-neg_index] == ' '.join(
        [k for k in winner if k != 'index'] + [f'{v:g}' for k, v in winner.items() if k != 'index']
    )
    assert [m['top1'] for m in results['final']['ema_members']] == [float(rows[-1][f'{p}_eval_top1']) for p in PREFIXES]
    last = checkpoint.read_metadata(checkpoint.resolve(run))
    members = last['metrics']['ema_members']
    assert len(members) == 4 and last['best_ema_index'] == int(np.argmax([m['top1'] for m in members]))
    assert last['score'] == max(m['top1'] for m in members)  # the checkpoint's score: the best


def test_plots_show_every_member(run, tmp_path):
    assert plot.run_label(run) == 'decay 0.6 +0.9 +std 0.05 +std 0.1'
    assert plot._member_names(run) == NAMES
    assert reporting.member_prefixes(_rows(run)[0]) == PREFIXES
    assert plot.plot_runs([run], tmp_path / 'runs.png').stat().st_size > 1000


def test_snapshots_hold_the_power_members_of_the_stack(run):
    assert sorted(int(p.stem) for p in (run / 'snapshots').glob('*.npz')) == [3, 6, 9, 10]
    tree = checkpoint.restore_tree(checkpoint.resolve(run))  # the last checkpoint: update 10
    stack = ema.init_stacked(tree['ema_params'])
    assert stack.flat.shape[0] == 4
    with np.load(run / 'snapshots' / '10.npz') as f:
        assert f['params'].dtype == np.float32 and int(f['step']) == 10
        assert np.array_equal(f['params'], np.asarray(stack.flat[2:]))  # rows 2, 3: the stds
        assert f['stds'].tolist() == [0.05, 0.1]


def test_posthoc_checkpoint_validates_and_exports(data, run, tmp_path, capsys):
    assert posthoc.main(['--run', str(run), '--std', '0.07', '--out', str(tmp_path / 'ph')]) == 0
    done = json.loads(capsys.readouterr().out.split('--result')[1])
    assert done['step'] == 10 and done['snapshots'] == [3, 6, 9, 10]
    results = validate(tmp_path / 'ph', data=data, use_ema=True)
    assert results['weights'] == 'ema' and 0 <= results['top1'] <= 100 and 'ema_index' not in results
    export(tmp_path / 'ph', tmp_path / 'ph.safetensors', use_ema=True)
    assert (tmp_path / 'ph.safetensors').stat().st_size > 1000


def test_ema_index_picks_that_member_in_validate_and_export(data, run, tmp_path):
    step_dir = checkpoint.resolve(run)
    meta, tree = checkpoint.read_metadata(step_dir), checkpoint.restore_tree(step_dir)
    for index in (1, 3, None):
        out = tmp_path / f'{index}.safetensors'
        done = export(run, out, use_ema=True, ema_index=index)
        member = meta['best_ema_index'] if index is None else index
        assert done['ema_index'] == member
        expected = to_timm(
            'resnet18',
            {'params': ema.tree(tree['ema_params'], member), 'batch_stats': ema.tree(tree['ema_batch_stats'], member)},
        )
        written = safetensors.numpy.load_file(out)
        assert set(written) == set(expected)
        assert all(np.array_equal(written[k], np.asarray(v)) for k, v in expected.items())
    rows = _rows(run)
    got = validate(run, data=data, ema_index=1)
    assert got['ema_index'] == 1 and got['top1'] == pytest.approx(float(rows[-1]['ema1_eval_top1']))
    assert got['loss'] == pytest.approx(float(rows[-1]['ema1_eval_loss']), rel=1e-5)
    with pytest.raises(UserError, match='--ema-index 4 is out of range'):
        export(run, tmp_path / 'bad.safetensors', ema_index=4)


def test_resume_of_a_stacked_run_is_bit_identical(data, run, tmp_path, monkeypatch, capsys):
    argv = [str(data), *RUN, '--output', str(tmp_path), '--experiment', 'run']
    monkeypatch.setenv(SIGNAL_AT_UPDATE, '7:TERM')
    assert main(argv) == 0
    assert int(checkpoint.resolve(tmp_path / 'run').name) == 7
    monkeypatch.delenv(SIGNAL_AT_UPDATE)
    assert main([str(data), *RUN, '--resume', str(tmp_path / 'run')]) == 0
    _assert_identical(
        checkpoint.restore_tree(checkpoint.resolve(tmp_path / 'run')), checkpoint.restore_tree(checkpoint.resolve(run))
    )
    for step in (9, 10):
        with (
            np.load(tmp_path / 'run' / 'snapshots' / f'{step}.npz') as a,
            np.load(run / 'snapshots' / f'{step}.npz') as b,
        ):
            assert np.array_equal(a['params'], b['params']) and np.array_equal(a['batch_stats'], b['batch_stats'])
    two_emas = RUN[: RUN.index('--model-ema-std')]  # 2 members, the checkpoint holds 4
    assert main([str(data), *two_emas, '--resume', str(tmp_path / 'run')]) == 2
    assert 'holds 4 EMA(s) but this run keeps 2' in capsys.readouterr().err


def test_host_stack_of_three_decays_equals_the_device_stack():
    cfg = ema.EmaConfig(decay=0.5, extra_decays=(0.9, 0.99))
    device_state, host_state = _state(cfg), offload.place_state(_state(cfg), 'host')
    fused = jax.jit(lambda s, b: train_step(s, b, cfg, 0.1), donate_argnums=0)
    stepper = offload.build_step(functools.partial(train_step, smoothing=0.1), cfg, 'host')
    for i in range(3):
        device_state, _ = fused(device_state, _batch(i))
        host_state, _ = stepper(host_state, _batch(i), i + 1)
    host_state = stepper.flush(host_state, 3)
    ema_p, ema_s = host_state.ema_params, host_state.ema_batch_stats
    assert offload.memory_kinds((ema_p, ema_s)) == {'pinned_host'} and ema_p.flat.shape[0] == 3
    assert np.array_equal(jax.device_get(ema_p.flat), np.asarray(device_state.ema_params.flat))
    assert np.array_equal(jax.device_get(ema_s.flat), np.asarray(device_state.ema_batch_stats.flat))
    members = [np.asarray(device_state.ema_params.flat[i]) for i in range(3)]
    assert not np.array_equal(members[0], members[2])  # three different averages

    def summed(params, stats, log_name):  # stands in for the evaluation: what each member's weights are
        return {'loss': float(np.sum(np.asarray(params.flat), dtype=np.float64)), 'top1': 0.0, 'top5': 0.0}

    on_host = evaluate_members(summed, *offload.ema_for_eval(host_state), ['a', 'b', 'c'])
    on_device = evaluate_members(summed, *offload.ema_for_eval(device_state), ['a', 'b', 'c'])
    assert [m['loss'] for m in on_host] == pytest.approx([m['loss'] for m in on_device], rel=1e-6)
    assert [m['loss'] for m in on_device] == [float(np.sum(m, dtype=np.float64)) for m in members]
