"""timm train.py's remaining options (issue 20): each against timm's own code or behaviour, and the refusals."""

import argparse
import json
import os
import pickle
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageDataset
from timm.data.readers.reader_tfds import ReaderTfds
from timm.data.transforms_factory import transforms_imagenet_eval
from timm.utils import ParseKwargs

from cli_output import error_line
from jax_ema import convert, data, device_input, optim
from jax_ema.config import Config, parse_args
from jax_ema.errors import UserError
from jax_ema.flags import parse_kwargs
from jax_ema.flags.optimizer import eps_and_betas
from jax_ema.models import init_head

IMG = 32


@pytest.fixture(autouse=True)
def listing_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(data.folder.CACHE_ENV, str(tmp_path_factory.getbasetemp() / 'listings'))


def _folders(root, classes, splits=('train', 'validation'), per_class=3):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(36 + 4 * i, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f'{i}.png')
    return root


# --- --model-kwargs / --opt-kwargs -------------------------------------------------------------------------


def test_kwargs_parse_as_timms_parse_kwargs():
    tokens = ['a=1', 'b=0.5', 'c=(0.9, 0.99)', 'd=silu', "e='x'", 'f=True', 'g=None', '']
    timm = argparse.ArgumentParser()
    timm.add_argument('--kw', nargs='*', default={}, action=ParseKwargs)
    assert parse_kwargs(tokens, '--kw') == timm.parse_args(['--kw', *tokens]).kw
    with pytest.raises(UserError, match='KEY=VALUE'):
        parse_kwargs(['novalue'], '--kw')


def test_model_kwargs_reach_the_model_and_flag_keys_are_refused():
    config = parse_args(['--model', 'efficientnet_b0', '--model-kwargs', 'stem_size=16'])
    from jax_ema.flags.model import extra_model_kwargs as model_kwargs
    from jax_ema.models import create_model

    assert create_model(config.model, 3, **model_kwargs(config)).stem_size == 16
    with pytest.raises(UserError, match='--drop-path'):
        parse_args(['--model-kwargs', 'drop_path_rate=0.1'])


def test_opt_kwargs_map_to_eps_and_betas_as_the_flags():
    by_kwargs = parse_args(['--opt', 'adamw', '--opt-kwargs', 'eps=1e-6', 'betas=(0.8,0.9)'])
    by_flags = parse_args(['--opt', 'adamw', '--opt-eps', '1e-6', '--opt-betas', '0.8', '0.9'])
    assert eps_and_betas(by_kwargs) == (1e-6, (0.8, 0.9)) and eps_and_betas(by_flags) == (1e-6, (0.8, 0.9))
    params = {'w': jnp.ones((3,))}
    grads = {'w': jnp.array([0.1, -0.2, 0.3])}
    updates = []
    for config in (by_kwargs, by_flags):
        _, _, _, tx = optim.create_optimizer_and_schedule(config, 10, 64)
        updates.append(tx.update(grads, tx.init(params), params)[0]['w'])
    np.testing.assert_array_equal(updates[0], updates[1])
    for tokens, message in (
        (['momentum=0.5'], 'not an option'),  # timm fails on it too: create_optimizer_v2 gets momentum twice
        (['amsgrad=True'], 'not an option'),
        (['betas=0.9'], 'two numbers'),
    ):
        with pytest.raises(UserError, match=message):
            parse_args(['--opt-kwargs', *tokens])
    with pytest.raises(UserError, match='also set by --opt-eps'):
        parse_args(['--opt-eps', '1e-3', '--opt-kwargs', 'eps=1e-6'])


# --- --head-init-scale / --head-init-bias ----------------------------------------------------------------


@pytest.mark.parametrize('model_name', ['resnet18', 'mobilenetv3_small_100'])
def test_head_init_as_timms_train_py(model_name):
    """timm's train.py lines on a timm model, converted, equal init_head on the converted untouched model."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=5)
    variables = convert.to_flax(model_name, {k: v.numpy() for k, v in model.state_dict().items()})
    with torch.no_grad():  # train.py's head init, on the torch model
        model.get_classifier().weight.mul_(0.25)
        model.get_classifier().bias.mul_(0.25)
        torch.nn.init.constant_(model.get_classifier().bias, -1.5)
    expected = convert.to_flax(model_name, {k: v.numpy() for k, v in model.state_dict().items()})
    ours = init_head(variables, 0.25, -1.5)
    jax.tree.map(np.testing.assert_array_equal, ours, expected)
    scaled_only = init_head(variables, 0.25, None)
    head = 'fc' if model_name == 'resnet18' else 'classifier'
    np.testing.assert_allclose(scaled_only['params'][head]['bias'], 0.25 * variables['params'][head]['bias'])


# --- --class-map ---------------------------------------------------------------------------------------


def test_class_map_labels_and_skips_folders_as_timm(tmp_path):
    root = _folders(tmp_path / 'ds', ['ant', 'bee', 'cat'])
    class_map = tmp_path / 'map.txt'
    class_map.write_text('cat\nant\ndog\n')  # bee left out; dog has no folder
    train, val = data.load_datasets(data.DataConfig(data_dir=str(root), img_size=IMG, class_map=str(class_map)))
    for ours, split in ((train, 'train'), (val, 'validation')):
        timm_ds = ImageDataset(str(root / split), class_map=str(class_map))
        assert [(os.path.realpath(p), int(t)) for p, t in timm_ds.reader.samples] == [
            (os.path.realpath(p), int(t)) for p, t in zip(ours.paths, ours.labels)
        ]
    assert train.num_classes == 3
    assert train.class_names[:2] == ('cat', 'ant')


def test_class_map_refusals(tmp_path):
    root = _folders(tmp_path / 'ds', ['ant', 'bee'])
    for name, content, message in (
        ('map.csv', b'ant', 'is not a .txt'),
        ('none.txt', b'zebra\n', 'no class folder'),
        ('map.pkl', pickle.dumps({'ant': 0}), 'unpickling can run code'),  # timm's .pkl maps: refused unread
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=message):
            data.load_datasets(data.DataConfig(data_dir=str(root), class_map=str(tmp_path / name)))
    with pytest.raises(UserError, match='image folders'):
        parse_args(['--dataset', 'tfds/x', '--class-map', 'm.txt'])


# --- --input-img-mode --------------------------------------------------------------------------------------


def test_luma_is_pils_convert_l():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :8] = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3], [128] * 3, [7, 9, 11]]
    expected = np.asarray(Image.fromarray(rgb).convert('L'))
    np.testing.assert_array_equal(data.transforms.to_luma(data.tf.constant(rgb)).numpy()[..., 0], expected)


def test_input_img_mode_l_gives_one_channel_as_timms_eval(tmp_path):
    root = _folders(tmp_path / 'ds', ['ant', 'bee'])
    cfg = data.DataConfig(data_dir=str(root), img_size=IMG, channels=1)
    train, val = data.load_datasets(cfg)
    batch = next(val.eval_batches(val.num_examples))
    assert batch['image'].shape == (val.num_examples, IMG, IMG, 1)
    timm_eval = transforms_imagenet_eval(img_size=IMG, crop_pct=0.875, use_prefetcher=True)
    for path, image in zip(val.paths, batch['image']):
        expected = timm_eval(Image.open(path).convert('L')).numpy()[0]  # timm's reader: convert(input_img_mode)
        assert np.abs(image[..., 0].astype(int) - expected).max() <= 1
    assert next(train.train_batches(4, 0))['image'].shape == (4, IMG, IMG, 1)


def test_input_img_mode_refusals():
    for argv, message in (
        (['--input-img-mode', 'CMYK'], 'RGB or L'),
        (['--input-img-mode', 'L'], '--in-chans 1'),  # the model takes 3 channels
    ):
        with pytest.raises(UserError, match=message):
            parse_args(argv)
    assert parse_args(['--input-img-mode', 'RGB']).input_img_mode == 'RGB'


# --- --epoch-repeats / --train-batches-per-epoch -------------------------------------------------------------


def test_epoch_order_extends_with_new_passes_and_keeps_one_pass():
    one = data.epoch_order(7, 3, 10)
    np.testing.assert_array_equal(one, np.random.default_rng([7, 3]).permutation(10))
    long = data.epoch_order(7, 3, 10, 25)
    np.testing.assert_array_equal(long[:10], one)
    assert sorted(long[10:20]) == list(range(10)) and len(long) == 25 and len(set(long[20:])) == 5
    np.testing.assert_array_equal(long, data.epoch_order(7, 3, 10, 25))  # a pure function of (seed, epoch)
    assert not np.array_equal(long[10:20], one)


@pytest.mark.parametrize('repeats', [0.0, 1.0, 2.5, 3.2])
def test_epoch_repeats_updates_per_epoch_as_timms_iterable_reader(repeats):
    """Ours drops a partial batch (timm's folder loader, drop_last) unless --epoch-repeats > 1, when it
    counts as timm's iterable reader: max(1, repeats) * N samples rounded up to whole batches."""
    cfg = data.DataConfig(epoch_repeats=repeats, img_size=8)
    train, _ = data.load_datasets(cfg)
    batch = 64
    reader = types.SimpleNamespace(
        repeats=repeats,
        num_samples=train.num_examples,
        global_num_workers=1,
        dist_num_replicas=1,
        is_training=True,
        batch_size=batch,
    )
    timm_batches = ReaderTfds._num_samples_per_worker(reader) // batch
    expected = train.num_examples // batch if repeats <= 1 else timm_batches
    assert train.steps_per_epoch(batch) == expected


def test_train_batches_per_epoch_sets_the_epoch_and_its_order():
    config = parse_args(['-b', '32', '--grad-accum-steps', '2', '--train-batches-per-epoch', '100'])
    train, _ = data.load_datasets(data.data_config(config))
    rows = 32 * jax.device_count() * 2
    assert train.steps_per_epoch(rows) == 50 and config.train_batches_per_epoch == 100
    assert parse_args(['--train-steps-per-epoch', '7']).train_batches_per_epoch == 7
    with pytest.raises(UserError, match='multiple of --grad-accum-steps'):
        parse_args(['--grad-accum-steps', '2', '--train-batches-per-epoch', '3'])


# --- accepted without effect, refused -------------------------------------------------------------------------


def test_no_effect_flags_are_accepted_and_unbuilt_ones_refused():
    config = parse_args(
        ['--grad-checkpointing', '--drop-connect', '0.2', '--train-num-samples', '5', '--val-num-samples', '5']
    )
    assert config.grad_checkpointing and config.drop_connect == 0.2
    assert parse_args(['--train-crop-mode', 'rrc', '--tta', '1']).tta == 1
    for argv, message in (
        (['--train-crop-mode', 'rkr'], 'not one of rrc, rkrc, rkrr'),
        (['--tta', '2'], 'not built'),
        (['--drop-connect', '1.5'], r'\[0, 1\)'),
        (['--epoch-repeats', '-1'], '>= 0'),
    ):
        with pytest.raises(UserError, match=message):
            parse_args(argv)
    assert Config().save_images is False


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_with_the_options(tmp_path, capsys):
    from jax_ema.train import main

    root = _folders(tmp_path / 'ds', ['ant', 'bee', 'cat'], per_class=4)
    (tmp_path / 'map.txt').write_text('bee\nant\n')
    argv = [
        str(root),
        *('--model', 'resnet18', '--img-size', str(IMG), '-b', '2', '--epochs', '1', '--warmup-epochs', '0'),
        *('--lr', '0.01', '--log-interval', '2', '--output', str(tmp_path / 'out'), '--experiment', 'x'),
        *('--class-map', str(tmp_path / 'map.txt'), '--train-batches-per-epoch', '5', '--save-images'),
        *('--head-init-scale', '0.5', '--head-init-bias', '0', '--opt-kwargs', 'eps=1e-6', '--grad-checkpointing'),
    ]
    assert main(argv) == 0
    out = capsys.readouterr()
    run = tmp_path / 'out' / 'x'
    assert 'no effect' not in out.out + out.err  # --grad-checkpointing is built (test_grad_checkpointing.py)
    results = json.loads((run / 'results.json').read_text())
    assert results['best_epoch'] == 0
    assert sorted(p.name for p in run.glob('train-batch-*.png')) == [f'train-batch-{i}.png' for i in (0, 2, 4)]
    grid = np.asarray(Image.open(run / 'train-batch-0.png'))
    assert grid.shape == (IMG, 8 * IMG, 3) and grid[:, : 2 * IMG].std() > 0 and not grid[:, 2 * IMG :].any()
    from jax_ema import checkpoint

    meta = checkpoint.read_metadata(checkpoint.resolve(run))
    assert meta['num_classes'] == 2 and meta['updates_per_epoch'] == 5  # 5 updates: the epoch of 8 images wrapped
    assert meta['model_kwargs'] == dict(grad_checkpointing=True)  # validated and resumed below
    from jax_ema.validate import validate

    checked = validate(run, root)  # the run's --class-map labels the folders again
    assert checked['num_images'] == 8 and checked['top1'] == results['final']['raw']['top1']
    # a resume with another epoch length goes on from the next epoch's start under the new length
    resumed = [*argv, '--epochs', '2', '--train-batches-per-epoch', '3', '--resume', str(run)]  # the last wins
    assert main(resumed) == 0
    out = capsys.readouterr()
    assert 'updates per epoch (5 -> 3)' in out.out + out.err
    meta = checkpoint.read_metadata(checkpoint.resolve(run))
    assert meta['epoch'] == 1 and meta['updates_per_epoch'] == 3


def test_grey_images_are_normalised_with_timms_adapted_stats():
    from timm.data.loader import adapt_to_chs

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for channels in (1, 3):
        assert data.channel_stats(mean, channels) == pytest.approx(adapt_to_chs(mean, channels), abs=1e-12)
        assert data.channel_stats(std, channels) == pytest.approx(adapt_to_chs(std, channels), abs=1e-12)
    train, _ = data.load_datasets(data.DataConfig(img_size=8, channels=1))
    batch = next(train.train_batches(4, 0))
    x = np.asarray(device_input.eval_images(jnp.asarray(batch['image']), train.device_input))
    assert x.shape == (4, 8, 8, 1)
    np.testing.assert_allclose(x[..., 0], (batch['image'][..., 0] / 255.0 - np.mean(mean)) / np.mean(std), rtol=1e-5)


def test_a_wrapped_epoch_resumes_exactly():
    train, _ = data.load_datasets(data.DataConfig(img_size=8, epoch_repeats=1.5))
    steps = train.steps_per_epoch(256)
    assert steps == -(-int(np.ceil(1.5 * train.num_examples)) // 256)
    whole = list(train.train_batches(256, 2))
    tail = list(train.train_batches(256, 2, start_step=steps - 2))
    for a, b in zip(whole[-2:], tail):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--tta', '2'], '--tta 2 is not built'),
        (['--model-kwargs', 'foo=1'], '--model-kwargs: resnet18 does not take it'),
        (['--class-map', 'missing.txt'], "cannot read --class-map 'missing.txt'"),
        (['--opt-kwargs', 'amsgrad=True'], '--opt-kwargs amsgrad=... is not an option'),
    ],
)
def test_bad_values_give_one_line_and_exit_2(tmp_path, capsys, extra, message):
    from jax_ema.train import main

    root = _folders(tmp_path / 'ds', ['ant', 'bee'])
    argv = [str(root), '--model', 'resnet18', '--img-size', str(IMG), '--output', str(tmp_path / 'out'), *extra]
    assert main(argv) == 2
    assert message in error_line(capsys.readouterr().err)  # after the run's log lines, one error line
    assert not (tmp_path / 'out').exists()


# --- --train-crop-mode rkrc / rkrr -------------------------------------------------------------------------


def _keep_ratio(scale, ratio, interpolation='bilinear'):
    from timm.data.transforms import ResizeKeepRatio

    return ResizeKeepRatio(
        IMG,
        interpolation=interpolation,
        random_scale_prob=1.0,
        random_scale_range=scale,
        random_scale_area=True,
        random_aspect_prob=1.0,
        random_aspect_range=ratio,
    )


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
@pytest.mark.parametrize(
    'scale, ratio', [((0.64, 0.64), (1.0, 1.0)), ((1.0, 1.0), (1.3, 1.3)), ((0.5, 0.5), (0.8, 0.8))]
)
def test_rkrc_is_timms_resize_keep_ratio_and_center_crop_or_pad(scale, ratio, interpolation):
    """Fixed draws (probability 1, one-point ranges): ours and timm's transforms, pixel for pixel (1 level)."""
    from timm.data.transforms import CenterCropOrPad

    from jax_ema.data import crop_modes

    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    key = data.tf.constant([3, 4], data.tf.int64)
    size = crop_modes.keep_ratio_size(key, 45, 61, IMG, scale, ratio, scale_prob=1.0, aspect_prob=1.0)
    resized = _keep_ratio(scale, ratio, interpolation)(Image.fromarray(image))
    assert tuple(int(s) for s in size) == (resized.height, resized.width)
    ours = data.transforms.resize(data.tf.constant(image), data.tf.stack(size), interpolation)
    ours = crop_modes.crop_or_pad(ours, key, IMG, 'rkrc').numpy()
    expected = np.asarray(CenterCropOrPad(IMG, padding_mode='reflect')(resized))
    assert ours.shape == expected.shape == (IMG, IMG, 3)
    assert np.abs(ours.astype(int) - expected).max() <= 1


def test_rkrr_windows_are_timms_random_crop_or_pad():
    """Every rkrr output is one of timm's RandomCropOrPad placements, and all of them come up."""
    from timm.data.transforms import crop_or_pad

    from jax_ema.data import crop_modes

    resized = np.random.default_rng(2).integers(0, 256, (IMG - 3, IMG + 2, 3), dtype=np.uint8)  # pad rows, crop cols
    pil = Image.fromarray(resized)
    candidates = {
        (top, left): np.asarray(crop_or_pad(pil, top, left, IMG, IMG, padding_mode='reflect'))
        for top in range(-3, 1)
        for left in range(0, 3)
    }
    seen = set()
    for i in range(60):
        ours = crop_modes.crop_or_pad(data.tf.constant(resized), data.tf.constant([i, 9], data.tf.int64), IMG, 'rkrr')
        match = [k for k, v in candidates.items() if np.array_equal(v, ours.numpy())]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(candidates)


def test_keep_ratio_draws_are_distributed_as_timms():
    import random

    from timm.data.transforms import ResizeKeepRatio

    from jax_ema.data import crop_modes

    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 3000
    random.seed(0)
    dummy = Image.new('RGB', (300, 200))
    timm_h = [ResizeKeepRatio.get_params(dummy, (IMG, IMG), 0.0, 0.5, scale, True, 0.5, ratio)[0] for _ in range(n)]
    fn = data.tf.function(lambda k: crop_modes.keep_ratio_size(k, 200, 300, IMG, scale, ratio)[0])
    ours = [int(fn(data.tf.constant([i, 0], data.tf.int64))) for i in range(n)]
    assert abs(np.mean(ours) - np.mean(timm_h)) < 4 * np.std(timm_h) / np.sqrt(n / 2)
    assert abs(np.mean(np.array(ours) == IMG) - np.mean(np.array(timm_h) == IMG)) < 0.04  # neither drawn: 1/4


@pytest.mark.parametrize('mode', ['rkrc', 'rkrr'])
def test_train_crop_modes_in_the_pipeline(tmp_path, mode):
    root = _folders(tmp_path / 'ds', ['ant', 'bee'])
    cfg = data.DataConfig(data_dir=str(root), img_size=IMG, train_crop_mode=mode)
    train, _ = data.load_datasets(cfg)
    first = next(train.train_batches(4, 0))['image']
    assert first.shape == (4, IMG, IMG, 3)
    np.testing.assert_array_equal(first, next(train.train_batches(4, 0))['image'])  # a pure function of the epoch
    assert parse_args(['--train-crop-mode', mode]).train_crop_mode == mode
