"""Bad input: one `error: ...` line on stderr (after the log lines: timm logs to stderr), exit code 2, no
traceback, nothing created or changed.

Every case runs a CLI in-process (`jax_ema.train.main`, `jax_ema.export.main`, `jax_ema.validate.main`)
against one tiny world of folders, files and checkpoints built once per module. None of them may reach
a train step. `python tests/test_bad_input.py` prints every case's real message as a markdown table and
writes it to docs/bad-input.md.
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

from bad_input_world import build_world
from cli_output import log_lines
from hub_cache import offline_hub
from jax_ema import export, plot, posthoc, train, validate
from read_only import read_only
from test_train import IMG

TINY = [
    '--model',
    'resnet18',
    '--img-size',
    str(IMG),
    '-b',
    '4',
    '--epochs',
    '1',
    '--warmup-epochs',
    '0',
    '--lr',
    '0.01',
    '-j',
    '1',
]
CLIS = {
    'train': train.main,
    'export': export.main,
    'validate': validate.main,
    'posthoc': posthoc.main,
    'plot': plot.main,
}


# --- the cases: (id, cli, argv builder, expected substring) -----------------------------------------


def _run(data, *extra):
    """A trainer command line: DATA (a world attribute), the tiny-run flags, `extra`, --output OUT.

    Items of `extra` may be functions of the world (paths inside it).
    """
    return lambda w: [
        str(getattr(w, data)),
        *TINY,
        *(str(x(w)) if callable(x) else x for x in extra),
        '--output',
        str(w.out),
    ]


CASES = [
    ('missing DATA', 'train', _run('missing'), 'does not exist'),
    ('DATA is a file', 'train', _run('a_file'), 'is not a folder'),
    ('DATA is an empty folder', 'train', _run('empty'), 'no .jpg/.jpeg/.png images found'),
    ('no images, only other files', 'train', _run('no_images'), 'no .jpg/.jpeg/.png images found'),
    ('an empty class folder', 'train', _run('empty_class'), 'bird holds no'),
    ('class folders differ between splits', 'train', _run('classes_differ'), 'class folders differ'),
    (
        '--num-classes != class folders found',
        'train',
        _run('data', '--num-classes', '3'),
        '--num-classes is 3 but 2 classes were found',
    ),
    ('a corrupt image, --verify-images', 'train', _run('corrupt', '--verify-images'), 'broken.png'),
    ('a truncated JPEG, --verify-images', 'train', _run('truncated', '--verify-images'), 'cut.jpg'),
    ('decay < 0', 'train', _run('data', '--model-ema', '--model-ema-decay', '-0.1'), 'outside [0, 1]'),
    ('decay > 1', 'train', _run('data', '--model-ema', '--model-ema-decay', '1.5'), 'outside [0, 1]'),
    ('--ema-decay not a number', 'train', _run('data', '--ema-decay', 'high'), 'is not a number'),
    ('unknown model', 'train', _run('data', '--model', 'resnet7'), "unknown model 'resnet7'"),
    ('--drop 1', 'train', _run('data', '--drop', '1'), '--drop must be in [0, 1)'),
    ('--drop-path negative', 'train', _run('data', '--drop-path', '-0.1'), '--drop-path must be in [0, 1)'),
    ('--bn-eps with a ResNet', 'train', _run('data', '--bn-eps', '1e-3'), 'resnet18 does not take --bn-eps'),
    (
        '--drop-block with an EfficientNet',
        'train',
        _run('data', '--model', 'efficientnet_b0', '--drop-block', '0.1'),
        'efficientnet_b0 does not take --drop-block',
    ),
    ('unknown --gp', 'train', _run('data', '--gp', 'mean'), "--gp 'mean' is not a global pool"),
    ('--in-chans 2', 'train', _run('data', '--in-chans', '2'), 'give --in-chans 1 or 3'),
    ('--in-chans 1, RGB mean', 'train', _run('data', '--in-chans', '1'), '--in-chans 1 needs one --mean'),
    ('unknown optimizer', 'train', _run('data', '--opt', 'sgdd'), "unknown optimizer 'sgdd'"),
    ('unknown scheduler', 'train', _run('data', '--sched', 'cosin'), "unknown lr schedule 'cosin'"),
    ('unknown --amp-dtype', 'train', _run('data', '--amp', '--amp-dtype', 'int8'), "invalid choice: 'int8'"),
    ('unknown --model-dtype', 'train', _run('data', '--model-dtype', 'int8'), 'use one of float32, bfloat16'),
    ('--model-dtype float16', 'train', _run('data', '--model-dtype', 'float16'), '--amp --amp-dtype float16'),
    (
        '--amp with --model-dtype bfloat16',
        'train',
        _run('data', '--amp', '--model-dtype', 'bfloat16'),
        'give one of --amp and --model-dtype',
    ),
    (
        '--model-ema-shard with --model-ema-force-cpu',
        'train',
        _run('data', '--model-ema', '--model-ema-shard', '--model-ema-force-cpu'),
        'exclude each other',
    ),
    (
        '--process-id outside --num-processes',
        'train',
        _run('data', '--num-processes', '2', '--process-id', '2'),
        'is not in [0, --num-processes 2)',
    ),
    ('--lr-noise off before on', 'train', _run('data', '--lr-noise', '0.9', '0.42'), 'would never be on'),
    ('--lr-noise with three values', 'train', _run('data', '--lr-noise', '0.1', '0.5', '0.9'), 'one or two fractions'),
    (
        '--lr-noise-pct 0',
        'train',
        _run('data', '--lr-noise', '0.5', '--lr-noise-pct', '0'),
        '--lr-noise-pct must be > 0',
    ),
    ('--opt-eps negative', 'train', _run('data', '--opt', 'rmsproptf', '--opt-eps', '-1'), 'opt_eps must be >= 0'),
    ('batch larger than the dataset', 'train', _run('data', '-b', '64'), 'does not fit the 20 training images'),
    ('zero batch size', 'train', _run('data', '-b', '0'), '--batch-size must be positive'),
    ('negative batch size', 'train', _run('data', '-b', '-4'), '--batch-size must be positive'),
    ('zero image size', 'train', _run('data', '--img-size', '0'), '--img-size must be positive'),
    ('image too small for the model', 'train', _run('data', '--img-size', '8', '-b', '1'), 'per channel'),
    ('--resume: missing checkpoint', 'train', _run('data', '--resume', lambda w: w.root / 'no_run'), 'does not exist'),
    (
        '--resume: only an orbax tmp folder',
        'train',
        _run('data', '--resume', lambda w: w.run_tmp_only),
        'no complete checkpoint',
    ),
    (
        '--resume: step folder without metadata',
        'train',
        _run('data', '--resume', lambda w: w.run_no_metadata),
        'no complete checkpoint',
    ),
    (
        '--resume: that step folder itself',
        'train',
        _run('data', '--resume', lambda w: w.run_no_metadata / 'checkpoints' / w.step.name),
        'no complete checkpoint',
    ),
    (
        '--resume: step folder with an empty state/',
        'train',
        _run('data', '--resume', lambda w: w.run_empty_state),
        'cannot restore',
    ),
    (
        '--resume: another model',
        'train',
        _run('data', '--resume', lambda w: w.run_resnet34),
        'holds resnet34 with 2 classes',
    ),
    (
        '--resume: another class count',
        'train',
        _run('data', '--resume', lambda w: w.run_5_classes),
        'holds resnet18 with 5 classes',
    ),
    ('--resume: a file', 'train', _run('data', '--resume', lambda w: w.a_file), 'is a file'),
    (
        '--resume: metadata not a JSON object',
        'train',
        _run('data', '--resume', lambda w: w.run_list_metadata),
        'metadata',
    ),
    ('--resume with another --gp', 'train', _run('data', '--gp', 'max', '--resume', lambda w: w.run), '--gp max'),
    ('--resume with another --opt', 'train', _run('data', '--opt', 'adam', '--resume', lambda w: w.run), '--opt'),
    (
        '--initial-checkpoint: missing file',
        'train',
        _run('data', '--initial-checkpoint', lambda w: w.root / 'none.safetensors'),
        'does not exist',
    ),
    (
        '--initial-checkpoint: not a torch file',
        'train',
        _run('data', '--initial-checkpoint', lambda w: w.weights_text),
        'weights.pth',
    ),
    (
        '--initial-checkpoint: a folder',
        'train',
        _run('data', '--initial-checkpoint', lambda w: w.folder_out),
        'is a folder',
    ),
    (
        '--initial-checkpoint: other class count',
        'train',
        _run('data', '--initial-checkpoint', lambda w: w.weights_5),
        'another number of classes',
    ),
    (
        '--initial-checkpoint: other architecture',
        'train',
        _run('data', '--model', 'resnet34', '--initial-checkpoint', lambda w: w.weights_r18),
        "missing key 'layer1.2.",
    ),
    (
        '--pretrained: weights not in the offline hub cache',
        'train',
        _run('data', '--pretrained'),
        'is not in the Hugging Face cache',
    ),
    (
        '--pretrained: unknown tag',
        'train',
        _run('data', '--model', 'resnet18.b9_in1k', '--pretrained'),
        "resnet18 has no pretrained tag 'b9_in1k'",
    ),
    (
        '--pretrained-path: missing file',
        'train',
        _run('data', '--pretrained-path', lambda w: w.root / 'none.safetensors'),
        'does not exist',
    ),
    (
        '--pretrained-path: other architecture',
        'train',
        _run('data', '--model', 'resnet34', '--pretrained-path', lambda w: w.weights_r18),
        "missing key 'layer1.2.",
    ),
    ('--interpolation unsupported', 'train', _run('data', '--interpolation', 'nearest'), "'nearest' is not supported"),
    ('--input-size not square', 'train', _run('data', '--input-size', '3', '32', '48'), 'square RGB images'),
    ('--mean with two values', 'train', _run('data', '--mean', '0.5', '0.4'), 'takes 1 or 3 finite numbers'),
    ('--std 0', 'train', _run('data', '--std', '0'), '--std must be > 0'),
    ('--smoothing outside [0, 1)', 'train', _run('data', '--smoothing', '1.5'), 'smoothing must be in [0, 1), got 1.5'),
    ('negative validation batch size', 'train', _run('data', '-vb', '-4'), 'must be positive, got -4'),
    ('--output is a file', 'train', lambda w: [str(w.data), *TINY, '--output', str(w.a_file)], 'is a file'),
    (
        '--output beneath a file',
        'train',
        lambda w: [str(w.data), *TINY, '--output', str(w.a_file / 'sub')],
        'cannot create the run folder',
    ),
    (
        '--model-ema-decay repeats a decay',
        'train',
        _run('data', '--model-ema', '--model-ema-decay', '0.9', '0.9'),
        'repeats a decay',
    ),
    (
        '--model-ema-std outside (0, 0.2887]',
        'train',
        _run('data', '--model-ema', '--model-ema-std', '0.5'),
        'sigma_rel 0.5 is outside',
    ),
    (
        '--model-ema-std not a number',
        'train',
        _run('data', '--model-ema', '--model-ema-std', 'wide'),
        "invalid float value: 'wide'",
    ),
    ('--model-ema-std without --model-ema', 'train', _run('data', '--model-ema-std', '0.05'), 'needs --model-ema'),
    (
        '--model-ema-snapshot-every without --model-ema-std',
        'train',
        _run('data', '--model-ema', '--model-ema-snapshot-every', '10'),
        'add --model-ema',
    ),
    (
        '--model-ema-snapshot-every negative',
        'train',
        _run('data', '--model-ema', '--model-ema-std', '0.05', '--model-ema-snapshot-every', '-1'),
        'must be >= 0',
    ),
    ('unknown --snapshot-dtype', 'train', _run('data', '--snapshot-dtype', 'int8'), "invalid choice: 'int8'"),
    (
        '--resume with another number of EMAs',
        'train',
        _run('data', '--model-ema', '--resume', lambda w: w.run_2_emas),
        'holds 2 EMA(s) but this run keeps 1',
    ),
    ('DATA and --data-dir differ', 'train', _run('data', '--data-dir', lambda w: w.empty), 'differ'),
    ('bad --eval-metric', 'train', _run('data', '--eval-metric', 'top3'), "invalid choice: 'top3'"),
    ('unknown flag', 'train', _run('data', '--model-emma'), 'unrecognized arguments: --model-emma'),
    (
        'export: missing checkpoint',
        'export',
        lambda w: ['--checkpoint', str(w.root / 'no_run'), '--out', str(w.out / 'm.safetensors')],
        'does not exist',
    ),
    (
        'export: --out without .safetensors',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--out', str(w.out / 'm.pth')],
        'must end in .safetensors',
    ),
    (
        'export: --use-ema of a run without EMA',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--use-ema', '--out', str(w.out / 'm.safetensors')],
        'without EMA',
    ),
    (
        'export: --out is a folder',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--out', str(w.folder_out)],
        'is a folder',
    ),
    (
        'export: --out in a missing folder',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--out', str(w.out / 'no' / 'm.safetensors')],
        'cannot write',
    ),
    (
        'export: metadata not a JSON object',
        'export',
        lambda w: ['--checkpoint', str(w.run_list_metadata), '--out', str(w.out / 'm.safetensors')],
        'metadata',
    ),
    ('export: no --out', 'export', lambda w: ['--checkpoint', str(w.run)], 'required: --out'),
    (
        'export: --ema-index of a run without EMA',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--ema-index', '0', '--out', str(w.out / 'm.safetensors')],
        'without EMA',
    ),
    (
        'export: --ema-index negative',
        'export',
        lambda w: ['--checkpoint', str(w.run_2_emas), '--ema-index', '-1', '--out', str(w.out / 'm.safetensors')],
        'out of range',
    ),
    (
        'validate: --ema-index past the EMAs',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run_2_emas), '--ema-index', '2'],
        'indices 0..1',
    ),
    (
        'validate: --interpolation unsupported',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--interpolation', 'nearest'],
        "'nearest' is not supported",
    ),
    (
        'validate: --ema-index not a number',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run_2_emas), '--ema-index', 'best'],
        'invalid int value',
    ),
    (
        'posthoc: a run without snapshots',
        'posthoc',
        lambda w: ['--run', str(w.run), '--std', '0.07', '--out', str(w.out / 'ph')],
        'no EMA snapshots',
    ),
    (
        'posthoc: missing run folder',
        'posthoc',
        lambda w: ['--run', str(w.root / 'no_run'), '--std', '0.07', '--out', str(w.out / 'ph')],
        'does not exist',
    ),
    (
        'posthoc: --std outside (0, 0.2887]',
        'posthoc',
        lambda w: ['--run', str(w.run), '--std', '0', '--out', str(w.out / 'ph')],
        'sigma_rel 0 is outside',
    ),
    (
        'posthoc: --out not empty',
        'posthoc',
        lambda w: ['--run', str(w.run), '--std', '0.07', '--out', str(w.run)],
        'not an empty folder',
    ),
    ('posthoc: no --std', 'posthoc', lambda w: ['--run', str(w.run), '--out', str(w.out / 'ph')], 'required: --std'),
    (
        'validate: missing checkpoint',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.root / 'no_run')],
        'does not exist',
    ),
    (
        'validate: data of another class count',
        'validate',
        lambda w: ['--checkpoint', str(w.run)],
        'has 10 classes but checkpoint',
    ),
    (
        'validate: zero batch size',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '-b', '0'],
        'batch size must be positive',
    ),
    (
        'validate: unknown split of the digits',
        'validate',
        lambda w: ['--checkpoint', str(w.run), '--split', 'test'],
        "has no split 'test'",
    ),
    ('validate: no --checkpoint, no --model', 'validate', lambda w: [str(w.data)], 'give --checkpoint C, or --model'),
    (
        'validate: pretrained weights not in the offline cache',
        'validate',
        lambda w: [str(w.data), '--model', 'resnet18.tv_in1k'],
        'is not in the Hugging Face cache',
    ),
    (
        'validate: --use-ema with pretrained weights',
        'validate',
        lambda w: [str(w.data), '--model', 'resnet18', '--use-ema'],
        'pretrained weights have no EMA',
    ),
    (
        'validate: --model wildcard matching nothing',
        'validate',
        lambda w: [str(w.data), '--model', 'resnet9*'],
        'matches no model with pretrained weights',
    ),
    (
        'validate: --model all with --checkpoint',
        'validate',
        lambda w: [str(w.data), '--model', 'all', '--checkpoint', str(w.run)],
        'validates pretrained weights; give one model name',
    ),
    (
        'validate: bulk validation where every model fails',
        'validate',
        lambda w: [str(w.data), '--model', str(w.a_file)],  # a file of model names: 'not a dataset'
        'none of the 1 validated',
    ),
    (
        'validate: --input-size not square',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--input-size', '3', '32', '48'],
        'square RGB images',
    ),
    (
        'validate: --input-size of two numbers',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--input-size', '32', '32'],
        'expected 3 arguments',
    ),
    (
        'validate: --results-file in a missing folder',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--results-file', str(w.missing / 'r.csv')],
        'cannot write --results-file',
    ),
    (
        'validate: --results-file in a read-only folder',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--results-file', str(w.root / 'read_only_out' / 'r.csv')],
        'cannot write --results-file',
    ),
    # runs that survive real life (issue 13, docs/reliability.md)
    (
        '--resume: a run another trainer is writing',
        'train',
        _run('data', '--resume', lambda w: w.run_busy),
        'is in use by another trainer (pid',
    ),
    (
        '--resume: an older checkpoint, no --experiment',
        'train',
        _run('data', '--resume', lambda w: w.run_two_steps / 'checkpoints' / '5'),
        'add --experiment NAME',
    ),
    (
        '--resume: a read-only run folder',
        'train',
        _run('data', '--resume', lambda w: w.run_read_only),
        'it is read-only here',
    ),
    (
        '--resume: a truncated checkpoint',
        'train',
        _run('data', '--resume', lambda w: w.run_truncated),
        'incomplete or damaged',
    ),
    (
        'validate: a truncated checkpoint',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run_truncated)],
        'incomplete or damaged',
    ),
    (
        'export: a truncated checkpoint',
        'export',
        lambda w: ['--checkpoint', str(w.run_truncated), '--out', str(w.out / 'm.safetensors')],
        'incomplete or damaged',
    ),
    (
        'export: an orbax checkpoint of another program',
        'export',
        lambda w: ['--checkpoint', str(w.foreign), '--out', str(w.out / 'm.safetensors')],
        'of another program',
    ),
    (
        'validate: an orbax checkpoint of another program',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.foreign)],
        'of another program',
    ),
    (
        'posthoc: a truncated snapshot',
        'posthoc',
        lambda w: ['--run', str(w.run_snapshot_cut), '--std', '0.07', '--out', str(w.out / 'ph')],
        'truncated',
    ),
    (
        'posthoc: --out in a read-only folder',
        'posthoc',
        lambda w: ['--run', str(w.run_snapshots), '--std', '0.07', '--out', str(w.root / 'read_only_out' / 'ph')],
        'Read-only file system',
    ),
    (
        'plot: a damaged summary.csv',
        'plot',
        lambda w: [str(w.run_summary_damaged), '--out', str(w.out / 'p.png')],
        'holds a non-number',
    ),
    (
        'plot: --out in a read-only folder',
        'plot',
        lambda w: [str(w.run_summary), '--out', str(w.root / 'read_only_out' / 'p.png')],
        'Read-only',
    ),
]


def _snapshot(root: Path) -> dict:
    """Every path under root with its size and modification time (folders: None, mtime)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob('*')
    }


def check_case(w, cli: str, build, expected: str) -> tuple[int, str, list[str]]:
    """Runs one case from w.cwd; (exit code, stderr, what is wrong with the answer: [] when all is well).

    Anything the call created is removed afterwards, so one failing case cannot spoil the next.
    """
    traced = []
    real_train_step = train.train_step

    def watched_train_step(*args, **kwargs):
        traced.append(True)
        return real_train_step(*args, **kwargs)

    argv = build(w)
    before = _snapshot(w.root)
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(w.cwd)
    train.train_step = watched_train_step
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            read_only(*w.read_only),
            log_lines() as logged,
        ):
            try:
                code = CLIS[cli](argv)
            except Exception:  # pylint: disable=broad-except  # what `python -m` would print, exit 1
                traceback.print_exc()
                code = 1
    finally:
        train.train_step = real_train_step
        os.chdir(here)
    after = _snapshot(w.root)
    created = sorted(set(after) - set(before))
    for rel in created:  # top-most first: a removed folder takes its contents along
        path = w.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    err = err.getvalue()
    lines = err.strip().splitlines()
    problems = []
    if code != 2:
        problems.append(f'exit code {code}, not 2')
    if 'Traceback' in err:
        problems.append('a traceback on stderr')
    logged = [line for message in logged for line in message.splitlines()]
    if lines[:-1] != logged or not lines or not lines[-1].startswith('error: '):
        problems.append(f'{len(lines)} lines on stderr, not the log and one "error: ..." line')
    if expected not in err:
        problems.append(f'{expected!r} not in the message')
    if traced:
        problems.append('a train step was traced: the bad input was not caught before training')
    if created:
        tops = [rel for rel in created if str(Path(rel).parent) not in created]
        problems.append(f'created {", ".join(tops)}')
    changed = sorted(
        rel
        for rel in before  # a folder's mtime moves with what was created in it
        if rel not in after or (before[rel][0] is not None and after[rel] != before[rel])
    )
    if changed:
        problems.append(f'changed or removed {", ".join(changed)}')
    return code, err, problems


# --- pytest ----------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp('bad_input'))
    with offline_hub(w.hub):
        yield w


@pytest.mark.parametrize('cli,build,expected', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capfd, cli, build, expected):
    _, err, problems = check_case(world, cli, build, expected)
    assert not problems, f'{"; ".join(problems)}\nstderr: {err}'
    assert capfd.readouterr().err == '', 'written to stderr below Python (C++ logs?)'


def test_the_check_catches_a_bad_answer(world, monkeypatch):
    def sloppy_cli(argv):  # writes a run folder and a file, changes a file, prints two lines, exits 1
        (world.out / 'run').mkdir()
        (world.cwd / 'stray.txt').write_text('x')
        world.a_file.write_text('not a dataset, overwritten\n')
        print('Traceback (most recent call last):\nValueError: boom', file=sys.stderr)
        return 1

    monkeypatch.setitem(CLIS, 'sloppy', sloppy_cli)
    code, _, problems = check_case(world, 'sloppy', lambda w: [], 'expected words')
    world.a_file.write_text('not a dataset\n')
    assert code == 1 and len(problems) == 6, problems
    assert problems[-1] == f'changed or removed {world.a_file.name}', problems
    assert not any(world.out.iterdir()) and not any(world.cwd.iterdir())  # and it cleaned up


def test_cases_cover_every_cli_and_have_unique_ids():
    assert len(CASES) >= 15 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1] for c in CASES} == set(CLIS)


# --- python tests/test_bad_input.py: the table of real messages ------------------------------------


def _abridge(w, argv: list[str]) -> str:
    """The command line with the world's paths shortened to names such as DATA, OUT, RUN."""
    names = sorted(
        ((str(getattr(w, k)), k.upper()) for k in vars(w) if isinstance(getattr(w, k), Path)),
        key=lambda kv: -len(kv[0]),
    )
    text = ' '.join(argv).replace(' '.join(TINY), '…')
    for path, name in names:
        text = text.replace(path, name if name != 'ROOT' else '.')
    return text


MAX_SHOWN = 400  # characters of a message shown in the table


def markdown_table(w) -> tuple[str, list[str]]:
    rows, problems = ['| bad input | command (abridged) | exact message |', '| --- | --- | --- |'], []
    for case_id, cli, build, expected in CASES:
        code, err, wrong = check_case(w, cli, build, expected)
        lines = err.strip().splitlines()[-1:]  # the error line, after the log
        message = f'Traceback … {lines[-1]}' if 'Traceback' in err else ' ⏎ '.join(lines)
        message = message or '(nothing on stderr)'
        if len(message) > MAX_SHOWN:
            message = f'{message[:MAX_SHOWN]} … ({len(message)} characters in all)'
        if wrong:
            problems.append(f'{case_id}: {"; ".join(wrong)}')
        command = f'python -m jax_ema.{cli} {_abridge(w, build(w))}'
        cell = lambda s: s.replace('|', '\\|').replace(str(w.root), '.')  # noqa: E731
        rows.append(f'| {cell(case_id)} | `{cell(command)}` | `{cell(message)}` |')
    return '\n'.join(rows) + '\n', problems


def write_doc(table: str, problems: list[str]) -> Path:
    doc = Path(__file__).resolve().parent.parent / 'docs' / 'bad-input.md'
    doc.parent.mkdir(exist_ok=True)
    text = (
        '# What each bad input answers\n\n'
        'Every CLI answers bad input with one `error:` line, the last on stderr (after any log lines, as timm logs '
        'there), and exit code 2, before anything is written. '
        'Generated by `python tests/test_bad_input.py`, which runs each case of its CASES table in-process '
        f"(`…` stands for the tiny-run flags `{' '.join(TINY)}`; capital names for the test's folders and "
        'files).\n\n' + table
    )
    if problems:
        text += '\nNot yet answered as they should be:\n\n' + ''.join(f'- {p}\n' for p in problems)
    doc.write_text(text)
    return doc


if __name__ == '__main__':
    with tempfile.TemporaryDirectory() as tmp:
        world_ = build_world(Path(tmp))
        with offline_hub(world_.hub):
            table_, problems_ = markdown_table(world_)
    print(table_)
    print(f'wrote {write_doc(table_, problems_)}')
    for problem in problems_:
        print('NOT AS EXPECTED:', problem, file=sys.stderr)
    sys.exit(1 if problems_ else 0)
