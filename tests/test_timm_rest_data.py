"""timm train.py's data options (issue 20): --class-map, --input-img-mode, --epoch-repeats and
--train-batches-per-epoch, each against timm's own code or behaviour, and the refusals."""

import os
import pickle
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from timm.data import ImageDataset
from timm.data.readers.reader_tfds import ReaderTfds
from timm.data.transforms_factory import transforms_imagenet_eval

import data_world
from data_world import IMG, class_folders
from jax_ema import data, device_input
from jax_ema.config import parse_args
from jax_ema.errors import UserError

listing_cache = data_world.listing_cache  # fixture


# --- --class-map ---------------------------------------------------------------------------------------


def test_class_map_labels_and_skips_folders_as_timm(tmp_path):
    root = class_folders(tmp_path / 'ds', ['ant', 'bee', 'cat'])
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
    root = class_folders(tmp_path / 'ds', ['ant', 'bee'])
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


def test_a_class_map_found_from_the_working_directory_is_recorded_absolute(tmp_path, monkeypatch):
    """So the run's args.yaml finds it from any directory; a name found only under DATA is kept (timm's rule)."""
    root = class_folders(tmp_path / 'ds', ['ant', 'bee'])
    (tmp_path / 'map.txt').write_text('ant\nbee\n')
    (root / 'in-data.txt').write_text('bee\nant\n')
    monkeypatch.chdir(tmp_path)
    assert parse_args([str(root), '--class-map', 'map.txt']).class_map == str(tmp_path / 'map.txt')
    assert parse_args([str(root), '--class-map', 'in-data.txt']).class_map == 'in-data.txt'


# --- --input-img-mode --------------------------------------------------------------------------------------


def test_luma_is_pils_convert_l():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :8] = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3], [128] * 3, [7, 9, 11]]
    expected = np.asarray(Image.fromarray(rgb).convert('L'))
    np.testing.assert_array_equal(data.transforms.to_luma(data.tf.constant(rgb)).numpy()[..., 0], expected)


def test_input_img_mode_l_gives_one_channel_as_timms_eval(tmp_path):
    root = class_folders(tmp_path / 'ds', ['ant', 'bee'])
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


def test_a_wrapped_epoch_resumes_exactly():
    train, _ = data.load_datasets(data.DataConfig(img_size=8, epoch_repeats=1.5))
    steps = train.steps_per_epoch(256)
    assert steps == -(-int(np.ceil(1.5 * train.num_examples)) // 256)
    whole = list(train.train_batches(256, 2))
    tail = list(train.train_batches(256, 2, start_step=steps - 2))
    for a, b in zip(whole[-2:], tail):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
