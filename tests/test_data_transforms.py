"""jax_ema.data's transforms against timm's: eval and train transforms, crop boxes, per-example augmentation."""

import os
import random

import numpy as np
import pytest
from PIL import Image
from timm.data import transforms as timm_transforms
from timm.data.transforms_factory import transforms_imagenet_eval
from torchvision import transforms as tv_transforms

import data_world
from data_world import IMG, first, load, save_image
from jax_ema import (
    data,  # the one module that imports tensorflow (after triton, see _compat)
    device_input,
)

tf = data.tf
listing_cache, splits_dir = data_world.listing_cache, data_world.splits_dir  # fixtures


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic', 'lanczos', 'box'])
def test_eval_transform_matches_timm(splits_dir, interpolation):
    """timm's eval transform (resize the short side to img_size / crop_pct, centre crop) as its uint8
    prefetcher path hands it over; ours decodes and resizes only the window under the crop."""
    _, val = data.load_datasets(data.DataConfig(data_dir=splits_dir, img_size=IMG, interpolation=interpolation))
    batch = first(val.eval_batches(val.num_examples))
    assert batch['image'].dtype == np.uint8
    timm_eval = transforms_imagenet_eval(img_size=IMG, crop_pct=0.875, interpolation=interpolation, use_prefetcher=True)
    for path, image in zip(val.paths, batch['image']):
        expected = timm_eval(Image.open(path).convert('RGB')).permute(1, 2, 0).numpy()
        assert np.abs(image.astype(int) - expected).max() <= 1


@pytest.fixture(scope='module')
def photos_dir(tmp_path_factory):
    """Images with flat areas and sharp edges (6x6 px blocks, where bicubic overshoots), of varied sizes."""
    root, rng = tmp_path_factory.mktemp('photos'), np.random.default_rng(0)
    for split in ('train', 'validation'):
        for name in ('a', 'b'):
            os.makedirs(root / split / name)
            for i, (w, h) in enumerate(((61, 47), (90, 120), (200, 150), (33, 80))):
                blocks = rng.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
                Image.fromarray(blocks).resize((w, h), Image.NEAREST).save(root / split / name / f'{i}.png')
    return str(root)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_eval_input_follows_the_data_config(photos_dir, interpolation):
    """interpolation, crop_pct, mean and std as timm's eval transform: the model's input (uint8 batch
    normalised on the device with the Dataset's DeviceInput) within 1 level of timm's normalised tensor,
    also next to sharp edges, where the cubic overshoot is clipped between PIL's two uint8 passes. The
    other interpolation is far off on these images, so the test tells them apart."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.75)
    _, val = data.load_datasets(
        data.DataConfig(
            data_dir=photos_dir,
            img_size=IMG,
            crop_pct=0.95,
            num_workers=1,
            interpolation=interpolation,
            mean=mean,
            std=std,
        )
    )
    assert (val.device_input.mean, val.device_input.std) == (mean, std)
    batch = first(val.eval_batches(val.num_examples))
    images = np.asarray(device_input.eval_images(batch['image'], val.device_input))

    def timm_levels(interp):  # |ours - timm's| in 8-bit levels
        timm_eval = transforms_imagenet_eval(img_size=IMG, crop_pct=0.95, interpolation=interp, mean=mean, std=std)
        return np.concatenate(
            [
                (
                    np.abs(image - timm_eval(Image.open(path).convert('RGB')).permute(1, 2, 0).numpy()) * std * 255
                ).ravel()
                for path, image in zip(val.paths, images)
            ]
        )

    assert timm_levels(interpolation).max() <= 1.01
    other = timm_levels('bicubic' if interpolation == 'bilinear' else 'bilinear')
    assert np.mean(other > 1.01) > 0.1


def test_eval_window_gives_the_pixels_of_resizing_everything(tmp_path):
    """Crop before resize: resizing only the window under the centre crop (placed where it lies) gives
    the pixels of resizing the whole image and cropping; decoding only that window of a JPEG gives
    the pixels of decoding it all."""
    cfg = data.DataConfig(img_size=64, crop_pct=0.8)
    for size, subsampling in (((211, 157), 2), ((120, 301), 0), ((90, 90), 1)):
        path = str(tmp_path / f'{size[0]}x{size[1]}.jpg')
        noise = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, quality=90, subsampling=subsampling)
        encoded = tf.io.read_file(path)
        window = data.eval_transform(encoded, cfg).numpy()
        decoded = tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE')
        np.testing.assert_array_equal(window, data.eval_transform(decoded, cfg, decoded=True).numpy())
        new_size, (top, left) = [t.numpy() for t in data.transforms.eval_geometry(size[1], size[0], 64, 0.8)]
        whole = data.resize(decoded, new_size).numpy()[top : top + 64, left : left + 64]
        gap = np.abs(window.astype(int) - whole)
        assert gap.max() <= 1 and np.mean(gap > 0) < 0.01  # float rounding only


@pytest.mark.parametrize('hflip, size', [(0.0, IMG), (1.0, IMG), (0.0, 61)])  # 61: enlarging
def test_train_transform_matches_timm_when_crop_is_fixed(splits_dir, hflip, size):
    # With scale (1, 1) and ratio (2, 3) no try fits these images: timm's centre fallback, no randomness.
    scale, ratio = (1.0, 1.0), (2.0, 3.0)
    cfg = data.DataConfig(data_dir=splits_dir, img_size=size, scale=scale, ratio=ratio, hflip=hflip)
    train, _ = data.load_datasets(cfg)
    batch = first(train.train_batches(train.num_examples, epoch=0))
    timm_train = tv_transforms.Compose(
        [  # up to timm's uint8 prefetcher hand-over (no normalisation)
            timm_transforms.RandomResizedCropAndInterpolation(size, scale, ratio, interpolation='bilinear'),
            tv_transforms.RandomHorizontalFlip(hflip),
        ]
    )
    order = data.epoch_order(cfg.seed, 0, train.num_examples)
    for index, image in zip(order, batch['image']):
        expected = np.asarray(timm_train(Image.open(train.paths[index]).convert('RGB')), int)
        assert np.abs(image.astype(int) - expected).max() <= 1


def sample_boxes(height, width, n, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """n boxes (top, left, h, w) from ours and from timm's get_params, both seeded."""
    keys = tf.random.experimental.stateless_split(tf.constant([0, height], tf.int64), n)

    def box(key):
        return tf.stack(data.random_resized_crop_box(key, height, width, scale, ratio))

    ours = tf.function(lambda k: tf.map_fn(box, k, fn_output_signature=tf.int32))(keys).numpy()
    random.seed(height)
    image = Image.new('RGB', (width, height))
    theirs = [timm_transforms.RandomResizedCropAndInterpolation.get_params(image, scale, ratio) for _ in range(n)]
    return ours.astype(np.float64), np.array(theirs, np.float64)


@pytest.mark.parametrize(
    'height, width, statistic',
    [
        (40, 100, lambda b: b[:, 3] == 100),  # how often the ratio-clamped fallback happens
        (12, 12, lambda b: b[:, 0] + b[:, 2] / 2),  # vertical centre: uniform offset, ends included
        (12, 12, lambda b: b[:, 1] + b[:, 3] / 2),
        (500, 500, lambda b: np.log(b[:, 3] / b[:, 2])),  # aspect: log-uniform
        (500, 500, lambda b: b[:, 2] * b[:, 3] / 500**2),  # area fraction: uniform in scale
    ],
)
def test_random_resized_crop_box_samples_like_timm(height, width, statistic):
    ours, theirs = sample_boxes(height, width, 4000)
    assert (ours[:, :2] >= 0).all() and (ours[:, 2:] >= 1).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    a, b = statistic(ours), statistic(theirs)
    tolerance = 5 * np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) <= tolerance, (a.mean(), b.mean(), tolerance)


def test_each_example_gets_its_own_augmentation(tmp_path):
    for name in ('a', 'b'):  # eight copies of one image
        for i in range(4):
            save_image(str(tmp_path / name / f'{i}.png'), size=(40, 52), seed=0)
    train, _ = load(tmp_path, val_split_fraction=0.25)
    images = first(train.train_batches(6, epoch=0))['image']
    assert len({image.tobytes() for image in images}) == 6
