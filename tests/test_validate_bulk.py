"""validate's bulk validation, as timm's validate.py: pretrained weights of `--model all` / a wildcard / a file of
names (from a hub cache the test builds, offline), a folder of timm files and several --checkpoint values;
results sorted by top-1, a failing model logged and left out, the results file; and the model's test size.

The weights are resnet18's with a 3-class classifier that always answers one class (zero weights, a bias), so
each file's top-1 is that class's share of the 2 + 3 + 5 validation images: 20, 30 or 50 %.
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from hub_cache import offline_hub, write_hub_cache
from jax_ema import pretrained_cfgs, timm_io, validate_bulk
from jax_ema.convert import to_timm
from jax_ema.data_config import resolve_data_config
from jax_ema.errors import UserError
from jax_ema.models import create_model
from jax_ema.validate import main
from jax_ema.validate_weights import run_flags

COUNTS = (2, 3, 5)  # validation images of class 0, 1, 2
IMG = 32
HUB = {'resnet18.a1_in1k': 2, 'resnet18.gluon_in1k': 0, 'resnet18.tv_in1k': 1}  # tag -> the class it answers
FLAGS = ['--img-size', str(IMG), '-b', '4', '-j', '1', '--log-freq', '100']


def _top1(answer: int) -> float:
    return 100.0 * COUNTS[answer] / sum(COUNTS)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('bulk_data')
    rng = np.random.default_rng(0)
    for c, count in enumerate(COUNTS):
        for split in ('train', 'validation'):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, size=(IMG, IMG, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f'class{c}' / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def state_dicts():
    """{class: a timm state_dict of resnet18 whose classifier answers that class}."""
    model = create_model('resnet18', len(COUNTS))
    variables = jax.device_get(
        jax.jit(lambda k: model.init(k, jnp.zeros((1, IMG, IMG, 3)), train=False))(jax.random.PRNGKey(0))
    )
    base = to_timm('resnet18', variables)
    out = {}
    for answer in range(len(COUNTS)):
        bias = np.zeros(len(COUNTS), np.float32)
        bias[answer] = 10.0
        out[answer] = dict(base, **{'fc.weight': np.zeros_like(base['fc.weight']), 'fc.bias': bias})
    return out


@pytest.fixture(scope='module')
def hub(tmp_path_factory, state_dicts):
    cache = tmp_path_factory.mktemp('hub')
    for name, answer in HUB.items():
        write_hub_cache(cache, f'timm/{name}', state_dicts[answer])
    with offline_hub(cache):
        yield cache


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, (json.loads(captured.out.split('--result\n')[1]) if code == 0 else None), captured.err


def test_pattern_selection_matches_timms_rules():
    resnet18 = [n for n in pretrained_cfgs.PRETRAINED_CFGS if n.startswith('resnet18.')]
    assert validate_bulk.pretrained_models('resnet18') == sorted(resnet18)  # no tag: every tag, as timm
    assert validate_bulk.pretrained_models('resnet1*.a3*') == [
        'resnet18.a3_in1k',
        'resnet101.a3_in1k',
        'resnet152.a3_in1k',
    ]  # timm's natural order: 18 before 101
    every = validate_bulk.pretrained_models('all')
    assert 'mobilenetv3_large_100.miil_in21k' not in every  # timm's non-ImageNet-1k filters
    assert 'mobilenetv3_large_100.miil_in21k_ft_in1k' in every
    assert len(every) == len(pretrained_cfgs.PRETRAINED_CFGS) - 1
    assert validate_bulk.natural_key('ckpt-9') < validate_bulk.natural_key('ckpt-10')


@pytest.mark.slow  # one resnet18 compile (~10 s on 2 busy cores)
def test_wildcard_sorts_by_top1_and_survives_failing_models(hub, data, tmp_path, capsys):
    out = tmp_path / 'results.csv'
    code, results, err = _run(capsys, [str(data), '--model', 'resnet18*', *FLAGS, '--results-file', str(out)])
    assert code == 0, err
    expected = sorted(HUB, key=lambda n: -_top1(HUB[n]))  # a1 (50 %), tv (30 %), gluon (20 %)
    assert [r['model'] for r in results] == expected
    assert [r['top1'] for r in results] == [_top1(HUB[n]) for n in expected]
    missing = [n for n in validate_bulk.pretrained_models('resnet18') if n not in HUB]
    for name in missing:  # not in the hub cache: timm's error line, and the sweep goes on
        assert f'ERROR: {name} failed to validate (model.safetensors of timm/{name} is not in the' in err
    assert f'WARNING: {len(missing)} of {len(missing) + len(HUB)} failed to validate' in err
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [row['model'] for row in rows] == expected and float(rows[0]['top1']) == results[0]['top1']
    by_name = {r['model']: r for r in results}
    a1, tv = pretrained_cfgs.PRETRAINED_CFGS['resnet18.a1_in1k'], pretrained_cfgs.PRETRAINED_CFGS['resnet18.tv_in1k']
    assert (by_name['resnet18.a1_in1k']['crop_pct'], by_name['resnet18.a1_in1k']['interpolation']) == (
        a1.test_crop_pct,  # --img-size given, --crop-pct not: the test crop_pct, as timm's resolve_data_config
        a1.interpolation,
    )
    assert (by_name['resnet18.tv_in1k']['crop_pct'], by_name['resnet18.tv_in1k']['interpolation']) == (
        tv.crop_pct,  # no test config: the train one
        tv.interpolation,
    )
    assert all(r['img_size'] == IMG and r['num_images'] == sum(COUNTS) for r in results)


@pytest.mark.slow  # shares the compile above, but tries every tag of every model
def test_model_all_and_a_file_of_names(hub, data, tmp_path, capsys):
    code, results, err = _run(capsys, [str(data), '--model', 'all', *FLAGS])
    assert code == 0, err
    assert [r['model'] for r in results] == sorted(HUB, key=lambda n: -_top1(HUB[n]))
    tried = next(line for line in err.splitlines() if line.startswith('Running bulk validation on these: '))
    assert 'resnet18.a1_in1k, ' in tried and 'miil_in21k,' not in f'{tried},'  # in21k weights: not even tried
    names = tmp_path / 'models.txt'
    names.write_text('resnet18.gluon_in1k\n\nresnet18.tv_in1k\n')
    out = tmp_path / 'results.json'
    argv = [str(data), '--model', str(names), *FLAGS, '--results-file', str(out), '--results-format', 'json']
    code, results, err = _run(capsys, argv)
    assert code == 0, err
    assert [r['model'] for r in results] == ['resnet18.tv_in1k', 'resnet18.gluon_in1k']
    assert json.loads(out.read_text()) == results


@pytest.mark.slow  # shares the compile above
def test_a_folder_of_timm_files_and_several_checkpoints(state_dicts, data, tmp_path, capsys):
    folder = tmp_path / 'timm_run'
    folder.mkdir()
    for epoch, answer in ((2, 0), (10, 2), (9, 1)):
        timm_io.save_timm_safetensors(state_dicts[answer], folder / f'checkpoint-{epoch}.safetensors')
    (folder / 'broken.pth').write_bytes(b'not a checkpoint')
    (folder / 'notes.txt').write_text('not a checkpoint either')
    code, results, err = _run(capsys, [str(data), '--checkpoint', str(folder), '--model', 'resnet18', *FLAGS])
    assert code == 0, err
    names = ['broken.pth', 'checkpoint-2.safetensors', 'checkpoint-9.safetensors', 'checkpoint-10.safetensors']
    assert f'Running bulk validation on these: {", ".join(str(folder / n) for n in names)}' in err  # natural order
    assert f'ERROR: {folder / "broken.pth"} failed to validate (' in err
    assert [r['checkpoint'] for r in results] == [str(folder / f'checkpoint-{e}.safetensors') for e in (10, 9, 2)]
    assert [r['top1'] for r in results] == [_top1(2), _top1(1), _top1(0)]
    two = [str(folder / 'checkpoint-2.safetensors'), str(folder / 'checkpoint-9.safetensors')]
    code, results, err = _run(capsys, [str(data), '--checkpoint', *two, '--model', 'resnet18', *FLAGS])
    assert code == 0, err
    assert [r['checkpoint'] for r in results] == two[::-1]


@pytest.mark.slow  # two compiles at 160 and 224 px
def test_pretrained_weights_are_evaluated_at_the_test_size(tmp_path, data, state_dicts, capsys):
    """resnet18.a3_in1k trains at 160 px and is evaluated at 224 by timm's validate.py; --use-train-size: 160."""
    cfg = pretrained_cfgs.PRETRAINED_CFGS['resnet18.a3_in1k']
    write_hub_cache(tmp_path / 'hub', f'timm/{cfg.name}', state_dicts[1])
    with offline_hub(tmp_path / 'hub'):
        argv = [str(data), '--model', cfg.name, '-b', '10', '-j', '1']
        code, test_size, err = _run(capsys, argv)
        assert code == 0, err
        code, train_size, err = _run(capsys, [*argv, '--use-train-size'])
        assert code == 0, err
    assert (test_size['img_size'], test_size['crop_pct']) == (cfg.test_input_size[-1], cfg.test_crop_pct)
    assert (train_size['img_size'], train_size['crop_pct']) == (cfg.input_size[-1], cfg.crop_pct)
    assert test_size['img_size'] != train_size['img_size']
    assert test_size['top1'] == train_size['top1'] == _top1(1)


def _run_config(model, size, run_crop_pct, use_train_size=False, **flags):
    """What validate evaluates one of our runs of `model` at (trained at `size`, `crop_pct`, bilinear), given
    validate's `flags`."""
    metadata = dict(
        model=model,
        img_size=size,
        data_config=dict(input_size=[3, size, size], crop_pct=run_crop_pct, interpolation='bilinear', mean=[0.5] * 3),
    )
    given = dict(dict(img_size=None, input_size=None, crop_pct=None, interpolation=None, mean=None, std=None), **flags)
    resolved = resolve_data_config(
        model, **run_flags(None, metadata, {}, 'DATA', given), use_test_size=not use_train_size
    )
    return resolved['input_size'][-1], resolved['crop_pct'], resolved['interpolation'], resolved['mean']


def test_a_run_is_evaluated_at_the_test_size_where_it_kept_the_models_size():
    cfg = pretrained_cfgs.lookup('resnet50')  # a1_in1k: trained at 224 / 0.95, tested at 288 / 1.0
    own = cfg.input_size[-1]
    assert _run_config('resnet50', own, cfg.crop_pct) == (288, 1.0, 'bilinear', (0.5,) * 3)  # the run's norm
    assert _run_config('resnet50', own, cfg.crop_pct, use_train_size=True)[:2] == (own, cfg.crop_pct)
    assert _run_config('resnet50', own, 0.8)[:2] == (288, 0.8)  # a crop_pct the run chose stays
    assert _run_config('resnet50', own, cfg.crop_pct, img_size=64)[:2] == (64, 1.0)  # as timm given --img-size 64
    assert _run_config('resnet50', 32, cfg.crop_pct)[:2] == (32, cfg.crop_pct)  # a size the run chose: its crop too
    assert _run_config('resnet50', 32, cfg.crop_pct, crop_pct=0.7, interpolation='bicubic') == (
        32,
        0.7,
        'bicubic',
        (0.5,) * 3,
    )


def test_sweep_keeps_going_past_failures_and_stops_at_ctrl_c(tmp_path, caplog):
    """validate_bulk.sweep with a stand-in validate_one: a UserError and any other exception are logged and left
    out, the results file is rewritten after each success, and Ctrl-C ends the sweep with the results so far."""

    def validate_one(model, checkpoint):
        if model == 'bad':
            raise UserError('weights not found')
        if model == 'crash':
            raise RuntimeError('out of memory\nsecond line')
        if model == 'stop':
            raise KeyboardInterrupt
        return dict(model=model, top1=float(model[1:]))

    saved, out = [], tmp_path / 'r.csv'

    def save(results):
        saved.append([r['model'] for r in results])
        validate_bulk.write_results(out, results)

    caplog.set_level('INFO', logger='jax_ema.validate')
    pairs = [(m, None) for m in ('m10', 'bad', 'm30', 'crash', 'm20', 'stop', 'm99')]
    results = validate_bulk.sweep(pairs, validate_one, save)
    assert [r['model'] for r in results] == ['m30', 'm20', 'm10']  # m99 never ran
    assert saved == [['m10'], ['m30', 'm10'], ['m30', 'm20', 'm10']]
    assert out.read_text().splitlines() == ['model,top1', 'm30,30.0', 'm20,20.0', 'm10,10.0']
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert errors == [
        'bad failed to validate (weights not found).',
        'crash failed to validate (RuntimeError: out of memory).',
    ]
    assert not list(tmp_path.glob('*.tmp'))
    with pytest.raises(UserError, match='none of the 2 validated'):
        validate_bulk.sweep([('bad', None), ('crash', None)], validate_one)
