"""validate: the raw and EMA numbers of real trainer runs (device and host EMA), the forms of
--checkpoint, the run's split settings, and bad input answered with one line and exit code 2."""

import csv
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cli_output import error_line
from jax_ema import checkpoint, data as data_lib, pretrained_cfgs, reporting, train
from jax_ema.models import create_model
from jax_ema.validate import main, validate

validate_module = sys.modules['jax_ema.validate']

pytestmark = pytest.mark.slow  # the module trains three runs to validate

IMG, PER_CLASS, FRACTION = 32, 10, 0.3
TINY = [
    '--model',
    'resnet18',
    '--img-size',
    str(IMG),
    '-b',
    '4',
    '--warmup-epochs',
    '0',
    '--lr',
    '0.05',
    '--log-interval',
    '2',
    '--val-split-fraction',
    str(FRACTION),
]
RUNS = {
    'ema': ['--epochs', '2', '--model-ema', '--model-ema-decay', '0.5'],
    'host': ['--epochs', '1', '--model-ema', '--model-ema-decay', '0.5', '--model-ema-force-cpu'],
    'plain': ['--epochs', '1'],
}


def _images(folder, classes, per_class, seed, splits=None):
    rng = np.random.default_rng(seed)
    for split in splits or ['']:
        for c, name in enumerate(classes):
            target = folder / split / name
            target.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 120, size=(40, 48, 3)) + 60 * c
                Image.fromarray(pixels.astype(np.uint8)).save(target / f'{i}.png')
    return folder


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return tmp_path_factory.mktemp('validate')


@pytest.fixture(scope='module')
def data(root):
    return _images(root / 'ds', ('cat', 'dog'), PER_CLASS, 0, splits=('train', 'validation'))


@pytest.fixture(scope='module')
def runs(root, data):
    """Three tiny trainer runs on `data`: device EMA (2 epochs), host EMA and no EMA (1 epoch each)."""
    done = {}
    for name, flags in RUNS.items():
        assert train.main([str(data), *TINY, *flags, '--output', str(root / 'out'), '--experiment', name]) == 0
        done[name] = root / 'out' / name
    return done


def _param_count(name, num_classes):
    model = create_model(name, num_classes)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jax.ShapeDtypeStruct((1, IMG, IMG, 3), jnp.float32)
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes['params']))


def _step_dirs(run):
    """The run's end-of-epoch step folders (those with a score), oldest first."""
    steps = [p for p in (run / 'checkpoints').iterdir() if p.name.isdigit()]
    return sorted((p for p in steps if checkpoint.read_metadata(p).get('score') is not None), key=lambda p: int(p.name))


def _summary_row(run, step_dir):
    epoch = checkpoint.read_metadata(step_dir)['epoch']
    return reporting.read_summary(run)[epoch]


def _assert_matches_summary(results, row, weights):
    assert results['top1'] == float(row[f'{weights}_eval_top1'])
    assert results['top5'] == float(row[f'{weights}_eval_top5'])
    assert results['loss'] == pytest.approx(float(row[f'{weights}_eval_loss']), abs=1e-6)


@pytest.mark.parametrize(
    'run_name, weights', [('ema', 'raw'), ('ema', 'ema'), ('host', 'raw'), ('host', 'ema'), ('plain', 'raw')]
)
def test_results_equal_the_runs_summary(runs, data, run_name, weights):
    run = runs[run_name]
    steps = _step_dirs(run)
    assert len(steps) == len(reporting.read_summary(run))  # one checkpoint per epoch
    for step_dir in steps:
        results = validate(step_dir, data, use_ema=weights == 'ema')
        _assert_matches_summary(results, _summary_row(run, step_dir), weights)
        assert results['top1_err'] == pytest.approx(100 - results['top1'])
        assert results['top5_err'] == pytest.approx(100 - results['top5'])
        assert results['weights'] == weights and results['checkpoint'] == str(step_dir)
        assert (results['model'], results['img_size'], results['crop_pct'], results['interpolation']) == (
            'resnet18',
            IMG,
            0.95,
            'bicubic',
        )  # resnet18's data config (resnet18.a1_in1k), as timm's
        assert results['num_images'] == 2 * PER_CLASS and results['split'] == 'validation'
        assert results['param_count'] == round(_param_count('resnet18', 2) / 1e6, 2)


def test_raw_and_ema_numbers_differ(runs):
    """Otherwise the test above could not tell which weights were validated."""
    for name in ('ema', 'host'):
        row = reporting.read_summary(runs[name])[-1]
        assert row['raw_eval_loss'] != row['ema_eval_loss']


def test_cli_prints_timm_line_and_result_json(runs, data, tmp_path, capsys):
    out = tmp_path / 'results.csv'
    assert main([str(data), '--checkpoint', str(runs['host']), '--use-ema', '--results-file', str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith('--result\n')  # stdout: the result alone; the log on stderr, as timm's
    results = json.loads(captured.out.split('--result\n')[1])
    _assert_matches_summary(results, reporting.read_summary(runs['host'])[-1], 'ema')
    line = ' * Acc@1 {:.3f} ({:.3f}) Acc@5 {:.3f} ({:.3f})'.format(
        results['top1'], results['top1_err'], results['top5'], results['top5_err']
    )
    log = captured.err.splitlines()
    assert log[-1] == line and log[-2].startswith('Test: [   0/')  # timm validate.py's lines (20 images, -b 256)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]['checkpoint'] == results['checkpoint']
    assert float(rows[0]['top1']) == results['top1'] and rows[0]['weights'] == 'ema'
    json_out = tmp_path / 'results.json'
    assert (
        main(
            [
                str(data),
                '--checkpoint',
                str(runs['host']),
                '--use-ema',
                '--results-file',
                str(json_out),
                '--results-format',
                'json',
            ]
        )
        == 0
    )
    assert json.loads(json_out.read_text()) == results


@pytest.mark.parametrize('where', ['run', 'checkpoints', 'step', 'last', 'best', 'checkpoints_best'])
def test_checkpoint_argument_forms(runs, data, where):
    run = runs['ema']
    steps = _step_dirs(run)
    path, expected = {
        'run': (run, steps[-1]),
        'checkpoints': (run / 'checkpoints', steps[-1]),
        'step': (steps[0], steps[0]),
        'last': (run / 'last', steps[-1]),
        'best': (run / 'best', None),
        'checkpoints_best': (run / 'checkpoints' / 'best', None),
    }[where]
    results = validate(path, data, use_ema=True)
    if expected is None:  # best: a step folder of the highest score (which one of a tie is checkpoint's call)
        expected = Path(results['checkpoint'])
        scores = [checkpoint.read_metadata(p)['score'] for p in steps]
        assert expected in steps and checkpoint.read_metadata(expected)['score'] == max(scores)
    assert results['checkpoint'] == str(expected)
    _assert_matches_summary(results, _summary_row(run, expected), 'ema')


def test_class_folders_split_by_the_runs_fraction(runs, root, tmp_path):
    """Class folders are split as in training: by args.yaml's fraction, else the default 0.2."""
    folders = _images(root / 'class_folders', ('a', 'b'), PER_CLASS, 1)
    results = validate(runs['plain'], folders)
    assert results['num_images'] == 2 * round(FRACTION * PER_CLASS)
    outside = shutil.copytree(_step_dirs(runs['plain'])[-1], tmp_path / 'copied' / '5')  # no args.yaml
    results = validate(outside, folders)
    assert results['num_images'] == 2 * round(0.2 * PER_CLASS)


def test_train_split(runs, data):
    results = validate(runs['plain'], data, split='train')
    assert results['split'] == 'train' and results['num_images'] == 2 * PER_CLASS
    assert results['loss'] != float(reporting.read_summary(runs['plain'])[-1]['raw_eval_loss'])  # other images


def _error_line(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert '--result' not in captured.out
    return error_line(captured.err)


def test_bad_inputs_give_one_line_and_exit_2(runs, data, root, capsys):
    missing = str(root / 'no_such_run')
    assert missing in _error_line(capsys, [str(data), '--checkpoint', missing])
    assert 'without EMA' in _error_line(capsys, [str(data), '--checkpoint', str(runs['plain']), '--use-ema'])
    three = _images(root / 'three', ('a', 'b', 'c'), 4, 2, splits=('train', 'validation'))
    err = _error_line(capsys, [str(three), '--checkpoint', str(runs['ema'])])
    assert '3 classes' in err and 'trained for 2' in err and str(data) in err
    err = _error_line(capsys, ['--checkpoint', str(runs['ema'])])  # no DATA: the 10-class digits
    assert 'digits' in err and '10 classes' in err and 'trained for 2' in err
    assert '--crop-pct' in _error_line(capsys, [str(data), '--checkpoint', str(runs['ema']), '--crop-pct', '2'])
    assert 'test' in _error_line(capsys, ['--checkpoint', str(runs['ema']), '--split', 'test'])


def test_module_entry_point(root):
    """`python -m jax_ema.validate` exits 2 with one stderr line for a missing checkpoint."""
    missing = str(root / 'missing_run')
    proc = subprocess.run(
        [sys.executable, '-m', 'jax_ema.validate', '--checkpoint', missing], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert missing in error_line(proc.stderr)


def test_every_checkpoint_of_a_run(runs, data, tmp_path, capsys, monkeypatch):
    """`--checkpoint RUN/checkpoints/*/` (several values): each validated, sorted by top-1 as timm's bulk
    validation, each equal to its epoch's summary.csv row; the results file holds them all. The sweep lists the
    folders and builds the dataset once, traces its decode pipeline once and compiles the eval step once
    (validate() calls without a shared `datasets` dict build one each)."""
    built, compiled = [], []
    load_datasets, make_eval = data_lib.load_datasets, validate_module._compiled_eval.__wrapped__
    monkeypatch.setattr(data_lib, 'load_datasets', lambda cfg: built.append(load_datasets(cfg)) or built[-1])
    monkeypatch.setattr(
        validate_module,
        '_compiled_eval',
        functools.lru_cache(lambda *a: compiled.append(make_eval(*a)) or compiled[-1]),  # a fresh cache
    )
    run, out = runs['ema'], tmp_path / 'all.csv'
    steps = _step_dirs(run)
    assert len(steps) == 2
    argv = [str(data), '--checkpoint', *map(str, steps), '--use-ema', '--results-file', str(out)]
    assert main(argv) == 0
    assert len(built) == 1 and built[0][1]._eval_fn.experimental_get_tracing_count() == 1
    assert len(compiled) == 1 and compiled[0]._cache_size() == 1  # one jit, one compile for both checkpoints
    for step_dir in steps:
        validate(step_dir, data, use_ema=True)
    assert len(built) == 1 + len(steps) and len(compiled) == 1  # each call alone: its own dataset
    results = json.loads(capsys.readouterr().out.split('--result\n')[1])
    assert sorted(r['checkpoint'] for r in results) == sorted(map(str, steps))
    assert [r['top1'] for r in results] == sorted((r['top1'] for r in results), reverse=True)
    for r in results:
        _assert_matches_summary(r, _summary_row(run, Path(r['checkpoint'])), 'ema')
    with out.open() as f:
        assert [row['checkpoint'] for row in csv.DictReader(f)] == [r['checkpoint'] for r in results]


def test_a_run_at_its_models_size_is_validated_at_the_test_size(root, data, capsys):
    """A run left at its model's size (resnet18.a3_in1k: trained at 160 px, one update) is evaluated at the
    model's test size (224), as timm's validate.py given the run's flags; with --use-train-size at 160, and then
    its raw and EMA numbers equal the run's summary.csv."""
    cfg = pretrained_cfgs.PRETRAINED_CFGS['resnet18.a3_in1k']
    assert cfg.input_size != cfg.test_input_size
    flags = ['-b', '2', '--epochs', '1', '--train-batches-per-epoch', '1', '--warmup-epochs', '0', '-j', '1']
    ema = ['--model-ema', '--model-ema-decay', '0.5']
    argv = [str(data), '--model', cfg.name, *flags, *ema, '--output', str(root / 'out'), '--experiment', 'own_size']
    assert train.main(argv) == 0
    run = root / 'out' / 'own_size'
    (step_dir,) = _step_dirs(run)
    row = _summary_row(run, step_dir)
    capsys.readouterr()
    for weights in ('raw', 'ema'):
        use_ema = ['--use-ema'] if weights == 'ema' else []
        results = {}
        for size, extra in (('test', []), ('train', ['--use-train-size'])):
            assert main([str(data), '--checkpoint', str(run), '-j', '1', *use_ema, *extra]) == 0
            results[size] = json.loads(capsys.readouterr().out.split('--result\n')[1])
        assert (results['test']['img_size'], results['test']['crop_pct']) == (
            cfg.test_input_size[-1],
            cfg.test_crop_pct,
        )
        assert (results['train']['img_size'], results['train']['crop_pct']) == (cfg.input_size[-1], cfg.crop_pct)
        _assert_matches_summary(results['train'], row, weights)
        assert results['test']['loss'] != pytest.approx(float(row[f'{weights}_eval_loss']), abs=1e-6)
