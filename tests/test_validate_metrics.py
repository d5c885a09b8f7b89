"""validate's --valid-labels, --real-labels and --metrics-avg (jax_ema/validate_metrics.py) through the API, the CLI
and a bulk validation, against numbers the test computes from its own forward pass of the same weights on the same
images; and their bad input.

The data: 13 validation images named as ImageNet's (ILSVRC2012_val_NNNNNNNN.JPEG, numbers shuffled over 3 class
folders; one of them unreadable, so masked out), 32x32; the weights: random resnet18s as timm files, one with the
data's 3 classes and two with 5 (for --valid-labels). The real.json and the --valid-labels file are written here.
A tiny TFDS split (tfds_world.py) with a `file_name` feature covers --real-labels on TFDS.
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from sklearn.metrics import f1_score, precision_score, recall_score

import data_world
from jax_ema import data as data_lib, timm_io, validate_metrics
from jax_ema.convert import to_timm
from jax_ema.device_input import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DeviceInput, eval_images
from jax_ema.errors import UserError
from jax_ema.models import create_model
from jax_ema.validate import main, validate
from tfds_world import write_tiny_tfds

listing_cache = data_world.listing_cache

IMG, COUNTS = 32, (4, 5, 4)  # images per class folder (one unreadable)
VALID = (3, 0, 4)  # --valid-labels: data class i is the model's class VALID[i]
FLAGS = dict(img_size=IMG, crop_pct=1.0, interpolation='bilinear', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
CLI_FLAGS = ['--img-size', str(IMG), '--crop-pct', '1', '--interpolation', 'bilinear', '-b', '4', '--log-freq', '1']


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('valmetrics')
    rng = np.random.default_rng(0)
    numbers = iter(rng.permutation(sum(COUNTS)) + 1)
    for split in ('train', 'validation'):
        for c, count in enumerate(COUNTS):
            (root / 'data' / split / f'class{c}').mkdir(parents=True)
            for i in range(count):
                name = f'ILSVRC2012_val_{next(numbers):08d}.JPEG' if split == 'validation' else f'{i}.png'
                path = root / 'data' / split / f'class{c}' / name
                if split == 'validation' and c == 1 and i == 2:
                    path.write_bytes(b'\xff\xd8 not a JPEG')  # unreadable: its row is masked out
                    continue
                pixels = rng.integers(0, 200, size=(IMG, IMG, 3)) + 25 * c
                Image.fromarray(pixels.astype(np.uint8)).save(path, 'PNG' if path.suffix == '.png' else 'JPEG')
    files = {}
    for name, classes in (('three', len(COUNTS)), ('five_a', 5), ('five_b', 5)):
        model = create_model('resnet18', classes)
        variables = model.init(jax.random.PRNGKey(len(files)), jnp.zeros((1, IMG, IMG, 3)), train=False)
        state_dict = to_timm('resnet18', jax.device_get(variables))
        state_dict['fc.weight'] = 20 * state_dict['fc.weight']  # logits far apart: the test's forward ranks alike
        state_dict['fc.bias'] = rng.normal(size=classes).astype(np.float32)
        files[name] = timm_io.save_timm_safetensors(state_dict, root / f'{name}.safetensors')
    # real labels of the data's 3 classes (3 outputs: the 3-class model's, or the 5-class ones' under VALID)
    real = [sorted(set(rng.integers(0, len(COUNTS), size=rng.integers(0, 3)).tolist())) for _ in range(sum(COUNTS))]
    real[0] = []  # an image without a real label: left out
    (root / 'real.json').write_text(json.dumps(real))
    (root / 'valid.txt').write_text(''.join(f'{i}\n' for i in VALID))
    return root, files, real


def _logits(path, dataset, names=None):
    """(logits [N, classes], labels, the ImageNet number of each image) of the readable images, in order (names:
    the examples' file names, default: their paths')."""
    info, variables = timm_io.read_timm_checkpoint(path, 'resnet18')
    model = create_model('resnet18', info['num_classes'])
    inputs = DeviceInput(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    forward = jax.jit(lambda x: model.apply(variables, eval_images(x, inputs), train=False))
    batches = data_world.concat(list(dataset.eval_batches(4)))
    mask = batches['mask'].astype(bool)
    names = [str(p) for p in dataset.paths] if names is None else names
    numbers = np.array([int(p[-13:-5]) for p in names] + [0] * (len(mask) - len(names)))
    logits = np.asarray(forward(batches['image']), np.float64)
    return logits[mask], batches['label'][mask], numbers[mask]


@pytest.fixture(scope='module')
def expected(world):
    """Each file's logits from the test's own forward pass (the dataset as validate builds it)."""
    root, files, _ = world
    cfg = data_lib.DataConfig(data_dir=str(root / 'data'), img_size=IMG, crop_pct=1.0, num_workers=1)
    _, dataset = data_lib.load_datasets(cfg)
    return {name: _logits(path, dataset) for name, path in files.items()}


def _topk_accuracy(logits, labels, k):
    top = np.argsort(-logits, axis=1)[:, :k]
    return 100.0 * float(np.mean([label in row for row, label in zip(top, labels)]))


def _real_accuracy(logits, numbers, real, k):
    top = np.argsort(-logits, axis=1)[:, :k]
    hits = [bool(set(row) & set(real[n - 1])) for row, n in zip(top, numbers) if real[n - 1]]
    return 100.0 * float(np.mean(hits))


def _sklearn(labels, logits, average):
    preds = logits.argmax(1)
    return {
        f'{average}_{name}': 100.0 * fn(labels, preds, average=average, zero_division=0)
        for name, fn in (('precision', precision_score), ('recall', recall_score), ('f1_score', f1_score))
    }


def _validate(world, name='three', **kwargs):
    root, files, _ = world
    return validate(files[name], root / 'data', model='resnet18', batch_size=4, workers=1, **FLAGS, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize('average', validate_metrics.METRICS_AVG)
def test_metrics_avg(world, expected, average):
    logits, labels, _ = expected['three']
    results = _validate(world, metrics_avg=average)
    assert results['top1'] == pytest.approx(_topk_accuracy(logits, labels, 1), abs=1e-9)
    want = _sklearn(labels, logits, average)
    assert {k: results[k] for k in want} == pytest.approx(want, abs=1e-9)
    keys = list(results)
    assert keys[keys.index('top5_err') + 1 : keys.index('top5_err') + 4] == list(want)  # where timm puts them


@pytest.mark.slow
def test_valid_labels_cut_the_logits(world, expected):
    logits, labels, _ = expected['five_a']
    cut = logits[:, list(VALID)]
    results = _validate(world, 'five_a', valid_labels=world[0] / 'valid.txt')
    assert results['num_images'] == sum(COUNTS)
    assert results['top1'] == pytest.approx(_topk_accuracy(cut, labels, 1), abs=1e-9)
    assert results['top5'] == pytest.approx(100.0, abs=1e-9)  # 3 outputs: top-5 holds them all
    log_softmax = (
        cut - np.log(np.exp(cut - cut.max(1, keepdims=True)).sum(1, keepdims=True)) - cut.max(1, keepdims=True)
    )
    assert results['loss'] == pytest.approx(-float(np.mean(log_softmax[np.arange(len(labels)), labels])), rel=1e-4)
    assert _validate(world, 'five_a', valid_labels=list(VALID)) == results  # a list as the file
    with pytest.raises(UserError, match='has 3 classes but checkpoint .* was trained for 5'):
        _validate(world, 'five_a')


@pytest.mark.slow
def test_real_labels_replace_top1_and_top5(world, expected):
    root, _, real = world
    logits, labels, numbers = expected['three']
    plain = _validate(world)
    results = _validate(world, real_labels=root / 'real.json')
    for k in (1, 5):
        assert results[f'top{k}'] == pytest.approx(_real_accuracy(logits, numbers, real, k), abs=1e-9)
        assert results[f'top{k}_err'] == pytest.approx(100.0 - results[f'top{k}'], abs=1e-9)
    assert plain['top1'] == pytest.approx(_topk_accuracy(logits, labels, 1), abs=1e-9)
    assert results['loss'] == plain['loss'] and set(results) == set(plain)  # the loss keeps the dataset's labels


@pytest.mark.slow
def test_real_labels_of_a_tfds_split_by_its_file_name_feature(world, tmp_path):
    root, files, _ = world
    numbers = np.random.default_rng(1).permutation(6) + 1
    names = [f'ILSVRC2012_val_{n:08d}.JPEG' for n in numbers]
    write_tiny_tfds(tmp_path, 'tiny_named', train=2, validation=6, file_names=lambda split, i: names[i])
    cfg = data_lib.DataConfig(data_dir=str(tmp_path), dataset='tfds/tiny_named', img_size=IMG, crop_pct=1.0)
    logits, _, numbers = _logits(files['five_a'], data_lib.load_datasets(cfg)[1], names)
    cut = logits[:, [2, 3]]  # --valid-labels 2 3; class 3's bias moved so that each class wins 3 of the 6 images
    shift = float(np.median(cut[:, 0] - cut[:, 1]))
    cut[:, 1] += shift
    assert sorted(cut.argmax(1).tolist()) == [0, 0, 0, 1, 1, 1]
    state_dict = {k: np.array(v) for k, v in load_file(files['five_a']).items()}
    state_dict['fc.bias'][3] += shift
    weights = timm_io.save_timm_safetensors(state_dict, tmp_path / 'centred.safetensors')
    real = [[] for _ in names]  # by image number: the image's own prediction (one: none, one: both classes)
    for n, pred in zip(numbers, cut.argmax(1)):
        real[n - 1] = [int(pred)]
    real[numbers[0] - 1], real[numbers[1] - 1] = [], [0, 1]
    (tmp_path / 'real.json').write_text(json.dumps(real))
    given = dict(dataset='tfds/tiny_named', valid_labels=[2, 3], real_labels=tmp_path / 'real.json')
    results = validate(weights, tmp_path, model='resnet18', batch_size=4, workers=1, **FLAGS, **given)
    for k in (1, 5):
        assert results[f'top{k}'] == pytest.approx(_real_accuracy(cut, numbers, real, k), abs=1e-9)
    write_tiny_tfds(tmp_path, 'tiny_unnamed', train=2, validation=6)
    with pytest.raises(UserError, match="TFDS dataset without a 'file_name' feature"):
        validate(weights, tmp_path, **dict(given, dataset='tfds/tiny_unnamed'), model='resnet18', **FLAGS)


@pytest.mark.slow
def test_cli_single_and_bulk_with_all_three(world, expected, tmp_path, capsys):
    root, files, real = world
    flags = ['--model', 'resnet18', '--valid-labels', str(root / 'valid.txt'), '--metrics-avg', 'weighted']
    flags += ['--real-labels', str(root / 'real.json'), *CLI_FLAGS]
    five = ('five_a', 'five_b')
    want = {}
    for name in five:
        logits, labels, numbers = expected[name]
        cut = logits[:, list(VALID)]
        want[name] = dict(top1=_real_accuracy(cut, numbers, real, 1), **_sklearn(labels, cut, 'weighted'))

    results_file = str(tmp_path / 'r.csv')
    assert main([str(root / 'data'), '--checkpoint', str(files['five_a']), *flags, '--results-file', results_file]) == 0
    out, err = capsys.readouterr()
    single = json.loads(out.split('--result\n')[1])
    assert {k: single[k] for k in want['five_a']} == pytest.approx(want['five_a'], abs=1e-9)
    line = validate_metrics.summary_line(single, 'weighted')
    assert line in err and ' | Precision(weighted) ' in line and ' | F1-score(weighted) ' in line
    with open(tmp_path / 'r.csv') as f:
        row = next(csv.DictReader(f))
    assert float(row['weighted_recall']) == pytest.approx(single['weighted_recall'])

    assert main([str(root / 'data'), '--checkpoint', *(str(files[n]) for n in five), *flags]) == 0  # the bulk path
    bulk = json.loads(capsys.readouterr().out.split('--result\n')[1])
    by_file = {r['checkpoint']: r for r in bulk}
    for name in five:
        assert {k: by_file[str(files[name])][k] for k in want[name]} == pytest.approx(want[name], abs=1e-9)


def test_bad_files(tmp_path):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    cases = [
        (lambda: validate_metrics.valid_labels(tmp_path / 'missing.txt'), 'cannot read --valid-labels'),
        (lambda: validate_metrics.valid_labels(write('v1.txt', '1\nbird\n')), "'bird' is not a class index"),
        (lambda: validate_metrics.valid_labels(write('v2.txt', '\n\n')), 'lists no class index'),
        (lambda: validate_metrics.valid_labels(write('v3.txt', '2\n0\n2\n')), 'lists class 2 twice'),
        (lambda: validate_metrics.prepare([0, 5], None, None, 5), 'class index 5 is out of range'),
        (lambda: validate_metrics.prepare([-1], None, None, 5), 'class index -1 is out of range'),
        (lambda: validate_metrics.prepare([1, 2.5], None), '2.5 is not a class index'),
        (lambda: validate_metrics.prepare(None, None, 'median'), "--metrics-avg 'median' is not one of"),
        (lambda: validate_metrics.real_labels(tmp_path / 'missing.json'), 'cannot read --real-labels'),
        (lambda: validate_metrics.real_labels(write('r1.json', '[[1], [2')), 'is not JSON'),
        (lambda: validate_metrics.real_labels(write('r2.json', '{"a": [1]}')), 'not a non-empty list of lists'),
        (lambda: validate_metrics.real_labels(write('r3.json', '[[1], [-2]]')), 'not a non-empty list of lists'),
        (lambda: validate_metrics.real_labels(write('r4.json', '[]')), 'not a non-empty list of lists'),
    ]
    for call, words in cases:
        with pytest.raises(UserError) as caught:
            call()
        assert words in str(caught.value), (words, str(caught.value))
    assert validate_metrics.valid_labels(write('v4.txt', ' 4\n\n0 \n')) == (4, 0)  # blank lines, spaces: allowed


def test_real_labels_must_fit_the_split(tmp_path):
    class Split:  # what check_dataset reads of a data.Dataset
        num_classes, num_examples = 2, 2
        paths = [
            str(tmp_path / 'a' / 'ILSVRC2012_val_00000002.JPEG'),
            str(tmp_path / 'b' / 'ILSVRC2012_val_00000001.JPEG'),
        ]

    def check(real, valid=None, split=Split, num_classes=2):
        return validate_metrics.check_dataset(split, num_classes, valid, real, 'ckpt', {}, 'DATA')

    assert check([[0], [1, 0]]) == [[1, 0], [0]]  # matched by name, not by position
    for real, words in (
        ([[0]], 'labels for 1 images but the split has 2'),
        ([[0], [2]], 'names class 2'),
        ([[], []], 'no real label to any image'),
    ):
        with pytest.raises(UserError, match='--real-labels') as caught:
            check(real)
        assert words in str(caught.value)
    Other = type('Other', (Split,), {'paths': [str(tmp_path / 'x.JPEG'), str(tmp_path / 'y.JPEG')]})
    with pytest.raises(UserError, match="image 'x.JPEG' is not named as an ImageNet validation image"):
        check([[0], [1]], split=Other)
    with pytest.raises(UserError, match="the built-in digits, or a TFDS dataset without a 'file_name' feature"):
        check([[0], [1]], split=type('Digits', (Split,), {'paths': None}))
    with pytest.raises(UserError, match='DATA has 2 classes but --valid-labels lists 3'):
        check(None, valid=(0, 1, 2), num_classes=4)
