"""`python -m jax_ema.validate` scores a timm training checkpoint (.pth.tar with state_dict and state_dict_ema) as
timm scores those weights: timm's own model, `load_checkpoint(..., use_ema)`, dataset, loader and accuracy on the
same image folder give the same top-1 / top-5 / loss, for the raw and for the EMA weights.

The images are saved at the evaluation size with crop_pct 1.0, so both pipelines feed identical pixels.
"""

import argparse
import importlib.util
import json

import numpy as np
import pytest
import timm
import timm.data
import timm.models
import timm.utils
import torch
from PIL import Image

from jax_ema.validate import main as validate_main

pytestmark = pytest.mark.slow  # one resnet18 compile, timm's loader twice: ~40 s on 2 cores
# our side reads the image folder through the input pipeline (tf.data): the GPU image has no TensorFlow
needs_tf = pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None, reason='no TensorFlow: tf.data needs it')

NAME, IMG, COUNTS = 'resnet18', 32, (3, 5, 4)  # images per class in the validation split: unequal on purpose


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('three_classes')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for c, count in enumerate(COUNTS):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 90, size=(IMG, IMG, 3)) + 80 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f'class{c}' / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A timm CheckpointSaver-style file: raw weights with a decisive classifier, EMA weights of another init."""
    torch.manual_seed(0)
    raw = timm.create_model(NAME, num_classes=len(COUNTS))
    ema = timm.create_model(NAME, num_classes=len(COUNTS))
    with torch.no_grad():
        raw.fc.bias.copy_(torch.tensor([0.0, 0.0, 30.0]))  # wide margins: no near-tie for float rounding to flip,
        ema.fc.bias.copy_(torch.tensor([0.0, 30.0, 0.0]))  # and a different answer from the raw weights
    path = tmp_path_factory.mktemp('timm_run') / 'model_best.pth.tar'
    torch.save(
        {
            'epoch': 3,
            'arch': type(raw).__name__.lower(),
            'state_dict': raw.state_dict(),
            'state_dict_ema': ema.state_dict(),
            'args': argparse.Namespace(model=NAME, num_classes=len(COUNTS), img_size=IMG),
            'metric': 50.0,
        },
        path,
    )
    return path


@pytest.fixture(scope='module')
def timm_scores(folder, checkpoint):
    """{use_ema: timm's scores} of the checkpoint's raw and EMA weights."""
    return {use_ema: _timm_scores(folder, checkpoint, use_ema) for use_ema in (False, True)}


def _timm_scores(folder, path, use_ema):
    """timm's own evaluation of the file's weights: what its validate.py computes (loss, top-1, top-5)."""
    model = timm.create_model(NAME, num_classes=len(COUNTS))
    timm.models.load_checkpoint(model, str(path), use_ema=use_ema)
    model.eval()
    config = timm.data.resolve_data_config({'img_size': IMG, 'crop_pct': 1.0}, model=model)
    dataset = timm.data.create_dataset('', root=str(folder / 'validation'))
    loader = timm.data.create_loader(
        dataset, input_size=config['input_size'], batch_size=5, use_prefetcher=False, crop_pct=1.0,
        interpolation=config['interpolation'], mean=config['mean'], std=config['std'], num_workers=0,
    )  # fmt: skip
    loss_sum, top1_sum, top5_sum, count = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for images, target in loader:
            logits = model(images)
            top1, top5 = timm.utils.accuracy(logits, target, topk=(1, 3))  # 3 classes: top-5 is top-3
            n = len(target)
            loss_sum += torch.nn.functional.cross_entropy(logits, target).item() * n
            top1_sum, top5_sum, count = top1_sum + top1.item() * n, top5_sum + top5.item() * n, count + n
    return {'loss': loss_sum / count, 'top1': top1_sum / count, 'top5': top5_sum / count}


def _ours(folder, path, capsys, *flags):
    argv = [str(folder), '--checkpoint', str(path), '--img-size', str(IMG), '--crop-pct', '1.0', '-b', '5', *flags]
    assert validate_main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.split('--result\n')[1]), captured.err


@needs_tf
@pytest.mark.parametrize('use_ema', [False, True], ids=['state_dict', 'state_dict_ema'])
def test_validate_scores_a_timm_checkpoint_as_timm(folder, checkpoint, timm_scores, capsys, use_ema):
    expected = timm_scores[use_ema]
    ours, err = _ours(folder, checkpoint, capsys, *(['--use-ema'] if use_ema else []))
    assert ours['weights'] == ('ema' if use_ema else 'raw') and ours['model'] == NAME  # the model from args
    assert ours['top1'] == pytest.approx(expected['top1'], abs=1e-9)
    assert ours['top5'] == pytest.approx(expected['top5'], abs=1e-9)
    assert ours['loss'] == pytest.approx(expected['loss'], rel=1e-4)
    assert ' * Acc@1 ' in err and 'Test: [   0/3]' in err  # timm validate.py's lines, on stderr


def test_raw_and_ema_weights_score_differently(timm_scores):
    raw, ema = timm_scores[False], timm_scores[True]
    assert raw['top1'] != ema['top1']  # so the test above tells the two apart
    assert ema['top1'] == pytest.approx(100.0 * COUNTS[1] / sum(COUNTS))  # the EMA's bias picks class 1
    assert raw['top1'] == pytest.approx(100.0 * COUNTS[2] / sum(COUNTS))


@needs_tf
def test_model_and_classes_from_the_flags_when_the_file_does_not_say(folder, checkpoint, timm_scores, tmp_path, capsys):
    bare = tmp_path / 'weights.pth'
    torch.save(torch.load(checkpoint, weights_only=False)['state_dict_ema'], bare)  # a plain state_dict
    assert validate_main([str(folder), '--checkpoint', str(bare)]) == 2
    assert 'pass --model NAME' in capsys.readouterr().err
    assert validate_main([str(folder), '--checkpoint', str(bare), '--model', NAME, '--num-classes', '10']) == 2
    assert 'holds a classifier for 3 classes' in capsys.readouterr().err.strip().splitlines()[-1]
    ours, _ = _ours(folder, bare, capsys, '--model', NAME, '--num-classes', '3')
    assert ours['top1'] == pytest.approx(timm_scores[True]['top1'], abs=1e-9)
