"""The schedules in the trainer: their flags, --sched plateau driven by the eval metric and resumed from its
saved state, --val-interval and --start-epoch (tiny runs: 2 classes x 10 images, 5 updates per epoch).

The lr values themselves are checked against timm's schedulers in parity_tests/test_schedule_parity.py.
"""

import numpy as np
import pytest

from jax_ema import checkpoint, reporting
from jax_ema.config import parse_args
from jax_ema.errors import UserError
from jax_ema.train import main
from test_train import _image_folder

UPE = 5
RUN = ['--model', 'resnet18', '--img-size', '32', '-b', '4', '--warmup-epochs', '0', '--lr', '0.01']


def test_flags_parse_with_timm_names_and_defaults():
    c = parse_args([])
    assert (c.decay_milestones, c.lr_cycle_mul, c.lr_cycle_decay, c.lr_cycle_limit, c.lr_k_decay) == (
        (90, 180, 270),
        1.0,
        0.5,
        1,
        1.0,
    )  # timm train.py's defaults
    assert (c.patience_epochs, c.start_epoch, c.val_interval) == (10, None, 1)
    c = parse_args(
        '--sched multistep --decay-milestones 3 6 --lr-cycle-mul 2 --lr-cycle-decay 0.3 --lr-cycle-limit 4 '
        '--lr-k-decay 1.5 --patience-epochs 2 --start-epoch 1 --val-interval 3'.split()
    )
    assert (c.sched, c.decay_milestones, c.lr_cycle_limit, c.patience_epochs, c.start_epoch, c.val_interval) == (
        'multistep',
        (3, 6),
        4,
        2,
        1,
        3,
    )


@pytest.mark.parametrize(
    'argv,match',
    [
        ('--sched sgdr', 'unknown lr schedule'),
        ('--decay-milestones 6 3', 'increasing'),
        ('--lr-cycle-mul 0', 'lr-cycle-mul'),
        ('--lr-cycle-limit 0', 'lr-cycle-limit'),
        ('--lr-k-decay 0', 'lr-k-decay'),
        ('--val-interval 0', 'val-interval'),
        ('--start-epoch -1', 'start-epoch'),
        ('--sched plateau --sched-on-updates', 'once per epoch'),
        ('--sched plateau --decay-rate 1', 'decay-rate'),
        ('--sched plateau --patience-epochs -1', 'patience-epochs'),
    ],
)
def test_bad_schedule_flags_are_one_line_errors(argv, match):
    with pytest.raises(UserError, match=match):
        parse_args(argv.split())


def _run(data, out, name, *flags):
    assert main([str(data), *RUN, *flags, '--output', str(out), '--experiment', name]) == 0
    return out / name


@pytest.fixture(scope='module')
def plateau_run(tmp_path_factory):
    """--sched plateau on top5 (always 100 with 2 classes: never better after the first epoch), patience 0:
    the lr halves after every validated epoch but the first."""
    data = _image_folder(tmp_path_factory.mktemp('sched') / 'ds')
    out = tmp_path_factory.mktemp('out')
    flags = ['--sched', 'plateau', '--patience-epochs', '0', '--decay-rate', '0.5', '--eval-metric', 'top5']
    return data, out, flags, _run(data, out, 'plateau', '--epochs', '3', *flags)


@pytest.mark.slow
def test_plateau_lr_follows_the_eval_metric_and_reaches_the_optimizer(plateau_run):
    data, out, flags, run = plateau_run
    rows = reporting.read_summary(run)
    assert [float(r['eval_top5']) for r in rows] == [100.0] * 3
    assert [float(r['lr']) for r in rows] == pytest.approx([0.01, 0.01, 0.005], rel=1e-6)
    last = checkpoint.resolve(run)
    tree = checkpoint.restore_tree(last)
    assert float(np.asarray(tree['opt_state']['hyperparams']['learning_rate'])) == pytest.approx(0.005, rel=1e-6)
    saved = checkpoint.read_metadata(last)['lr_plateau']  # stepped with epoch 2's metric: the next lr
    assert saved['lr'] == pytest.approx(0.0025) and saved['best'] == 100.0


@pytest.mark.slow
def test_a_resume_in_the_middle_of_a_plateau_schedule_goes_on_as_the_uninterrupted_run(plateau_run):
    data, out, flags, run = plateau_run
    middle = run / 'checkpoints' / str(UPE)  # the end of epoch 0: best metric seen, no decay yet
    resumed = _run(data, out, 'resumed', '--epochs', '3', *flags, '--resume', str(middle))
    rows, reference = reporting.read_summary(resumed), reporting.read_summary(run)
    assert [r['epoch'] for r in rows] == ['1', '2']  # a new run folder: the rows from the resume on
    for key in ('lr', 'eval_loss', 'eval_top1'):  # a fresh plateau state would keep lr 0.01 in epoch 2
        assert [r[key] for r in rows] == [r[key] for r in reference[1:]], key


@pytest.mark.slow
def test_val_interval_and_start_epoch_as_timm(plateau_run, capfd):
    data, out, flags, _ = plateau_run  # the same compiled steps as the plateau run
    run = _run(data, out, 'interval', '--epochs', '4', *flags, '--val-interval', '3', '--start-epoch', '1')
    rows = reporting.read_summary(run)
    assert [r['epoch'] for r in rows] == ['2', '3']  # timm: (epoch + 1) % 3 == 0, and the last epoch
    assert 'Skipping eval and checkpointing' in capfd.readouterr().err  # logged, as timm's, to stderr
    steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
    assert steps == [3 * UPE, 4 * UPE]  # none for the skipped epoch 1
    assert int(checkpoint.restore_tree(checkpoint.resolve(run))['step']) == 4 * UPE  # counted from epoch 1
    # timm's plateau at --start-epoch 1: a fresh one stepped to epoch 1 and 2 without a metric, epoch 2's
    # metric the first it sees (no decay), then the lr for the last epoch.
    assert [float(r['lr']) for r in rows] == pytest.approx([0.01, 0.01], rel=1e-6)
    assert checkpoint.read_metadata(checkpoint.resolve(run))['lr_plateau']['num_bad_epochs'] == 0


def test_start_epoch_past_the_schedule_is_refused(plateau_run, capsys):
    data, out, _, _ = plateau_run
    assert main([str(data), *RUN, '--epochs', '2', '--start-epoch', '2', '--output', str(out)]) == 2
    assert 'start-epoch 2 is not before the end' in capsys.readouterr().err
