"""validate's --retry, --crop-mode / --crop-border-pixels and --test-pool wiring, through the CLI (one checkpoint and
a bulk validation) and the Python API, with the evaluation replaced by a stand-in: an out-of-memory error injected
at the larger batch sizes (timm's batch-size decay and log lines), the pixels each crop mode hands the model
(timm's eval transform), and bad values answered with one line."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from cli_output import error_line
from jax_ema import timm_io, validate_retry
from jax_ema.convert import to_timm
from jax_ema.errors import UserError
from jax_ema.models import create_model
from jax_ema.validate import main, validate
from test_eval_crops import timm_pixels

validate_module = sys.modules['jax_ema.validate']
IMG, CLASSES = 32, 2
OOM = 'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1234567 bytes.'


@pytest.fixture(autouse=True)
def no_gc_between_retries(monkeypatch):
    """Each retry's gc.collect() takes ~0.8 s with torch, TF and JAX loaded; a stand-in evaluation frees nothing."""
    monkeypatch.setattr(validate_retry.gc, 'collect', lambda *args: 0)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Two classes of three images (a wide, a tall, a square one) in train and validation splits."""
    root, rng = tmp_path_factory.mktemp('options_data'), np.random.default_rng(0)
    for split in ('train', 'validation'):
        for c in range(CLASSES):
            (root / split / f'class{c}').mkdir(parents=True)
            for i, (w, h) in enumerate(((61, 40), (40, 75), (50, 50))):
                blocks = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
                Image.fromarray(blocks).resize((w, h), Image.NEAREST).save(root / split / f'class{c}' / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A timm resnet18 file with a 2-class classifier (random weights: the stand-in evaluation ignores them)."""
    model = create_model('resnet18', CLASSES)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, IMG, IMG, 3)), train=False))
    variables = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), variables)
    path = tmp_path_factory.mktemp('options_weights') / 'resnet18.safetensors'
    timm_io.save_timm_safetensors(to_timm('resnet18', variables), path)
    return path


class Evaluation:
    """A stand-in for step.evaluate: records each call's batch size (and first batch), raises `error` while the
    batch size is above `fits`."""

    def __init__(self, fits=10**9, error=OOM):
        self.fits, self.error, self.sizes, self.first_batch = fits, error, [], None

    def __call__(self, eval_fn, params, batch_stats, dataset, batch_size, *args, **kwargs):
        self.sizes.append(batch_size)
        if batch_size > self.fits:
            raise jax.errors.JaxRuntimeError(self.error)
        self.first_batch = next(dataset.eval_batches(dataset.num_examples))
        return {'top1': 50.0, 'top5': 100.0, 'loss': 0.7}


def _flags(data, weights, *extra, bulk=False):
    checkpoints = [str(weights)] * (2 if bulk else 1)  # --checkpoint F F: a bulk validation
    return [str(data), '--model', 'resnet18', '--img-size', str(IMG), '-j', '1', *extra, '--checkpoint', *checkpoints]


def _timm_decays(batch_size, fits):
    """The batch sizes timm's _try_run tries, by timm.utils.decay_batch_step, until one fits."""
    from timm.utils import decay_batch_step

    sizes = [batch_size]
    while sizes[-1] > fits:
        sizes.append(decay_batch_step(sizes[-1]))
    return sizes


def test_retry_decays_the_batch_size_as_timm(data, weights, monkeypatch, capsys):
    evaluation = Evaluation(fits=5)
    monkeypatch.setattr(validate_module, 'evaluate', evaluation)
    assert main(_flags(data, weights, '-b', '256', '--retry')) == 0
    assert evaluation.sizes == _timm_decays(256, 5) == [256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4]
    err = capsys.readouterr().err.splitlines()
    assert err.count(f'ERROR: "{OOM}" while running validation.') == 12
    reductions = [line for line in err if line.startswith('WARNING: Reducing batch size to ')]
    assert reductions == [f'WARNING: Reducing batch size to {b} for retry.' for b in evaluation.sizes[1:]]


def test_without_retry_out_of_memory_is_one_line(data, weights, monkeypatch, capsys):
    evaluation = Evaluation(fits=5)
    monkeypatch.setattr(validate_module, 'evaluate', evaluation)
    assert main(_flags(data, weights, '-b', '8')) == 2
    assert 'out of memory at batch size 8' in error_line(capsys.readouterr().err)
    assert evaluation.sizes == [8]
    monkeypatch.setattr(validate_module, 'evaluate', Evaluation(fits=0))
    with pytest.raises(UserError, match='out of memory even at batch size 1'):  # the API, out of memory at 1
        validate(weights, data, model='resnet18', img_size=IMG, batch_size=3, retry=True)


def test_other_errors_are_not_retried(data, weights, monkeypatch):
    evaluation = Evaluation(fits=0, error='INTERNAL: something else')
    monkeypatch.setattr(validate_module, 'evaluate', evaluation)
    with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):
        validate(weights, data, model='resnet18', img_size=IMG, batch_size=16, retry=True)
    assert evaluation.sizes == [16]


def test_bulk_validation_retries_each_model_from_the_batch_size_given(data, weights, monkeypatch, capsys):
    """As timm's validate.py: every model of a bulk validation gets _try_run, from the initial batch size."""
    evaluation = Evaluation(fits=40)
    monkeypatch.setattr(validate_module, 'evaluate', evaluation)
    assert main(_flags(data, weights, '-b', '64', bulk=True)) == 0
    assert evaluation.sizes == _timm_decays(64, 40) * 2 == [64, 48, 32] * 2
    assert capsys.readouterr().out.count('"top1": 50.0') == 2


@pytest.mark.parametrize('mode, border', [('squash', None), ('border', '3'), ('center', '4')])
def test_crop_mode_reaches_the_pixels(data, weights, monkeypatch, capsys, mode, border):
    """The model's input under --crop-mode / --crop-border-pixels is timm's eval transform of each image."""
    evaluation = Evaluation()
    monkeypatch.setattr(validate_module, 'evaluate', evaluation)
    extra = ['--crop-mode', mode] + (['--crop-border-pixels', border] if border else [])
    assert main(_flags(data, weights, '--crop-pct', '0.875', *extra)) == 0
    paths = sorted((data / 'validation').glob('*/*.png'))
    for path, image in zip(paths, evaluation.first_batch['image']):
        expected = timm_pixels(path, mode, 0.875, int(border or 0), 'bicubic')  # resnet18.a1_in1k's interpolation
        assert np.abs(image.astype(int) - expected).max() <= 1, path


def test_test_pool_only_above_the_pretrained_size(data, weights, monkeypatch, capsys):
    """--test-pool at the model's size: no pooling, the crop_pct kept; above it (the API): timm's log line,
    crop_pct 1.0 and the pooled head compiled."""
    monkeypatch.setattr(validate_module, 'evaluate', Evaluation())
    assert main(_flags(data, weights, '--test-pool', '--crop-pct', '0.9')) == 0
    captured = capsys.readouterr()
    assert 'test time pooling' not in captured.err and '"crop_pct": 0.9' in captured.out
    compiled, signature = [], inspect.signature(validate_module._compiled_eval)
    monkeypatch.setattr(validate_module, '_compiled_eval', lambda *a: compiled.append(signature.bind(*a).arguments))
    results = validate(weights, data, model='resnet18.a3_in1k', img_size=161, crop_pct=0.9, test_pool=True)
    assert results['crop_pct'] == 1.0 and compiled[-1]['pool'] == (5, 5)  # a3: 160 px, timm's pool_size 5 x 5
    line = 'Target input size (161, 161) > pretrained default (160, 160), using test time pooling'
    assert line in capsys.readouterr().err  # the CLI above set the logging up


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--crop-mode', 'centre'], "--crop-mode 'centre' is not one of center, squash, border"),
        (['--crop-border-pixels', '-2'], '--crop-border-pixels must be an integer >= 0, got -2'),
    ],
)
def test_bad_values_are_one_line_exit_2(data, weights, capsys, flags, message):
    assert main(_flags(data, weights, *flags)) == 2
    assert message in error_line(capsys.readouterr().err)


REAL_OOM = """
import json, resource, sys
import jax, jax.numpy as jnp
from jax_ema import validate_retry

make = jax.jit(lambda n: jnp.full((n, 2**24), 1.0, jnp.float32), static_argnums=0)  # n x 64 MiB
make(1).block_until_ready()  # the CPU client and its threads up before the limit
vm = int(next(line for line in open('/proc/self/status') if line.startswith('VmSize')).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))  # 1 GiB more address space
sizes = []

def at(n):
    sizes.append(n)
    return float(make(n).block_until_ready()[0, 0])

print(json.dumps([validate_retry.run(at, 64, retry=True), sizes]))
"""


@pytest.mark.slow  # a subprocess importing jax
def test_a_real_xla_out_of_memory_is_retried(tmp_path):
    """XLA's own RESOURCE_EXHAUSTED (an address-space limit on a CPU process: 1 GiB more than it holds) is caught
    and retried down timm's sequence until the buffer fits; 64 x 64 MiB cannot."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), JAX_PLATFORMS='cpu')
    done = subprocess.run([sys.executable, '-c', REAL_OOM], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    value, sizes = json.loads(done.stdout.strip().splitlines()[-1])
    assert value == 1.0 and 1 <= sizes[-1] <= 16 and sizes == _timm_decays(64, sizes[-1])
    assert f'Reducing batch size to {sizes[-1]} for retry.' in done.stderr


def test_a_retry_starts_the_kept_predictions_afresh(data, weights, monkeypatch):
    """--retry with --metrics-avg: an attempt that ran out of memory after some batches leaves none of their
    predictions behind, so the scores equal an evaluation at the batch size that fits."""
    whole = validate_module.evaluate

    def out_of_memory_after_a_batch(eval_fn, params, batch_stats, dataset, batch_size, *args, **kwargs):
        if batch_size > 2:
            eval_fn(params, batch_stats, next(dataset.eval_batches(batch_size)))
            raise jax.errors.JaxRuntimeError(OOM)
        return whole(eval_fn, params, batch_stats, dataset, batch_size, *args, **kwargs)

    keys = ('top1', 'top5', 'loss', 'macro_precision', 'macro_recall', 'macro_f1_score')
    flags = dict(model='resnet18', img_size=IMG, metrics_avg='macro')
    direct = validate(weights, data, batch_size=2, **flags)
    monkeypatch.setattr(validate_module, 'evaluate', out_of_memory_after_a_batch)
    retried = validate(weights, data, batch_size=4, retry=True, **flags)
    assert [retried[k] for k in keys] == [direct[k] for k in keys]
