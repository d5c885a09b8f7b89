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


def resize_cases():
    """(window, offset, in_size, out_size, start, size) for resize_region: odd sizes, 1-pixel windows and
    outputs, shrinking, enlarging and both at once, regions of a larger resize (as eval's window), grey."""
    rng = np.random.default_rng(14)
    cases = [  # (window h, w, channels, offset, in_size, out_size, start, size)
        (1, 1, 3, (0, 0), (1, 1), (7, 5), (0, 0), (7, 5)),
        (1, 9, 3, (0, 0), (1, 9), (1, 4), (0, 0), (1, 4)),
        (13, 1, 1, (0, 0), (13, 1), (3, 6), (0, 0), (3, 6)),
        (61, 47, 3, (0, 0), (61, 47), (1, 1), (0, 0), (1, 1)),
        (300, 260, 3, (0, 0), (300, 260), (224, 224), (0, 0), (224, 224)),  # the train crop
        (33, 80, 3, (0, 0), (33, 80), (64, 29), (0, 0), (64, 29)),  # taller and narrower
        (90, 120, 3, (30, 41), (150, 200), (73, 97), (11, 18), (41, 50)),  # eval: a window, a region
        (70, 60, 3, (5, 2), (90, 64), (31, 70), (3, 9), (20, 41)),  # another, PIL's height first
    ]
    for _ in range(9):
        h, w = rng.integers(2, 160, 2)
        oh, ow = rng.integers(2, 160, 2)
        cases.append((h, w, 3, (0, 0), (h, w), (oh, ow), (0, 0), (oh, ow)))
    return [
        (rng.integers(0, 256, (h, w, c), dtype=np.uint8),) + tuple(tuple(int(v) for v in t) for t in rest)
        for h, w, c, *rest in cases
    ]


def scale_and_translate(image, size, scale, translation, kernel):
    """One call of TensorFlow's 2-D op on [H, W, C], float32 out."""
    return tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=size, scale=scale, translation=translation, kernel_type=kernel, antialias=True
    )[0].numpy()


def two_2d_calls(window, size, scale, translation, kernel, height_first):
    """PIL's two passes made of the 2-D op, each with the other axis at scale 1 (which bicubic leaves as it is),
    rounded and clipped between and after, in either order."""
    rows = ((scale[0], 1), (translation[0], 0))  # the height alone
    columns = ((1, scale[1]), (0, translation[1]))  # the width alone
    first, second = (rows, columns) if height_first else (columns, rows)
    size_first = (size[0], window.shape[1]) if height_first else (window.shape[0], size[1])
    between = np.clip(np.floor(scale_and_translate(window, size_first, *first, kernel) + 0.5), 0, 255)
    return np.clip(np.floor(scale_and_translate(between.astype(np.uint8), size, *second, kernel) + 0.5), 0, 255)


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_resize_passes_give_the_pixels_of_the_2d_op(interpolation):
    """The 1-D passes (transposes, reshapes, translations) are TensorFlow's 2-D resampling bit for bit:
    bilinear its one 2-D pass rounded once; bicubic its passes in either of PIL's orders. (Box is PIL's own.)"""
    kernel = data.transforms.KERNELS[interpolation][0]
    for window, offset, in_size, out_size, start, size in resize_cases():
        scale = np.array(out_size, np.float32) / np.array(in_size, np.float32)  # as resize_region, in float32
        translation = np.array(offset, np.float32) * scale - np.array(start, np.float32)
        message = str((window.shape, out_size, size))
        if interpolation != 'bicubic':
            ours = data.transforms.resize_region(window, offset, in_size, out_size, start, size, interpolation)
            expected = np.floor(scale_and_translate(window, size, scale, translation, kernel) + 0.5)
            np.testing.assert_array_equal(ours.numpy(), expected.astype(np.uint8), err_msg=message)
            continue
        for height_first in (False, True):
            ours = data.transforms._two_passes(window, size, scale, translation, kernel, height_first).numpy()
            expected = two_2d_calls(window, size, scale, translation, kernel, height_first)
            np.testing.assert_array_equal(ours, expected.astype(np.uint8), err_msg=message + str(height_first))


@pytest.mark.parametrize('interpolation, mismatched', [('bilinear', 0.2), ('bicubic', 0.002), ('lanczos', 0.005)])
def test_resize_matches_pil(interpolation, mismatched):
    """Whole images against the installed PIL's resize (timm's), at sizes whose passes it takes in either order
    (Pillow >= 13: the height first where it shrinks by over twice the width's pixels): within one level
    everywhere, off by one on few pixels (bilinear: PIL rounds between its passes, we once). Box: the next test."""
    gaps, orders = [], set()
    for window, *_ in resize_cases():
        for out_h, out_w in ((window.shape[0] * 2 + 1, window.shape[1] // 3 + 1), (37, 64), (9, 6)):
            image = Image.fromarray(window.squeeze(-1) if window.shape[-1] == 1 else window)
            expected = np.asarray(image.resize((out_w, out_h), getattr(Image, interpolation.upper())), int)
            ours = data.resize(window, (out_h, out_w), interpolation).numpy().reshape(expected.shape)
            gaps.append(np.abs(ours - expected).ravel())
            orders.add(bool(data.transforms.pillow_height_first(window.shape[:2], (out_h, out_w))))
    gaps = np.concatenate(gaps)
    assert orders == {False, True}
    assert gaps.max() <= 1 and np.mean(gaps > 0) < mismatched, np.mean(gaps > 0)


def test_box_resize_is_pils_exactly():
    """Box is PIL's pixels bit for bit: whole images shrunk and enlarged (odd sizes, 1 pixel, grey, either pass
    order, ratios that put pixel centres on the filter's edges: 3 -> 2, 32 -> 60, where TensorFlow's box kernel was
    127 levels off), and eval's regions (a window placed where it lies) against PIL's whole resize, cropped."""
    rng = np.random.default_rng(3)
    sizes = [((3, 3), (2, 2)), ((32, 32), (60, 60)), ((1, 1), (5, 7)), ((9, 1), (1, 4)), ((7, 5), (1, 1))]
    sizes += [((1000, 12), (3, 2)), ((300, 260), (224, 224)), ((45, 30), (30, 20))]
    sizes += [(tuple(rng.integers(1, 80, 2)), tuple(rng.integers(1, 160, 2))) for _ in range(30)]
    orders = set()
    for (h, w), (out_h, out_w) in sizes:
        grey = rng.random() < 0.2
        image = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BOX))
        ours = data.resize(image.reshape(h, w, -1), (out_h, out_w), 'box').numpy().reshape(expected.shape)
        np.testing.assert_array_equal(ours, expected, err_msg=str(((h, w), (out_h, out_w))))
        orders.add(bool(data.transforms.pillow_height_first((h, w), (out_h, out_w))))
    assert orders == {False, True}
    for _, _, in_size, out_size, start, size in resize_cases():  # eval's way: the window under the region
        whole = rng.integers(0, 256, in_size + (3,), dtype=np.uint8)
        bounds = [data.transforms.resize_support(in_size[a], out_size[a], start[a], size[a], 'box') for a in (0, 1)]
        (top, bottom), (left, right) = [(int(first), int(end)) for first, end in bounds]
        expected = np.asarray(Image.fromarray(whole).resize(out_size[::-1], Image.BOX))
        expected = expected[start[0] : start[0] + size[0], start[1] : start[1] + size[1]]
        window = whole[top:bottom, left:right]
        ours = data.transforms.resize_region(window, (top, left), in_size, out_size, start, size, 'box')
        np.testing.assert_array_equal(ours.numpy(), expected, err_msg=str((in_size, out_size, start, size)))


@pytest.mark.parametrize('pixels', [153, 160, 161])  # 161: past what float32 rounds as PIL's fixed point
def test_box_averages_every_sum_as_pil(pixels):
    """A row of `pixels` shrunk to one pixel, for every sum of its values 0..255 * pixels: PIL's fixed-point
    rounding of each average (the width alone: PIL skips the height, which is unchanged)."""
    sums = np.arange(255 * pixels + 1)
    rows = np.minimum(np.maximum(sums[:, None] - 255 * np.arange(pixels), 0), 255).astype(np.uint8)
    expected = np.asarray(Image.fromarray(rows).resize((1, len(rows)), Image.BOX))
    ours = data.resize(rows[..., None], (len(rows), 1), 'box').numpy()[..., 0]
    np.testing.assert_array_equal(ours, expected)
