"""validate's --crop-mode center|squash|border and --crop-border-pixels: timm's own eval transform
(transforms_imagenet_eval, as its uint8 prefetcher path hands the pixels over) on images the test writes, within
one level; through the input pipeline; and bad values refused with one line."""

import numpy as np
import pytest
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_eval

from jax_ema import data
from jax_ema.data import eval_crops
from jax_ema.errors import UserError

tf = data.tf
IMG = 32
SIZES = ((61, 47), (90, 120), (200, 150), (33, 80), (45, 45))  # (width, height): wide, tall, square


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Blocky noise (sharp edges, where a misplaced window shows) as PNG, and one JPEG; their paths."""
    root, rng = tmp_path_factory.mktemp('crops'), np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        blocks = rng.integers(0, 256, (h // 5 + 1, w // 5 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((w, h), Image.NEAREST)
        paths.append(root / (f'{i}.jpg' if i == 1 else f'{i}.png'))
        image.save(paths[-1], **({'quality': 90} if i == 1 else {}))
    return paths


def timm_pixels(path, mode, crop_pct, border, interpolation, mean=(0.485, 0.456, 0.406)):
    """timm's eval transform of the image file at `path`, uint8 HWC (its prefetcher path: not normalised)."""
    transform = transforms_imagenet_eval(
        img_size=IMG,
        crop_pct=crop_pct,
        crop_mode=mode,
        crop_border_pixels=border,
        interpolation=interpolation,
        mean=mean,
        use_prefetcher=True,
    )
    return transform(Image.open(path).convert('RGB')).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(
    'mode, crop_pct, border, interpolation',
    [
        ('squash', 0.875, 0, 'bilinear'),
        ('squash', 1.0, 3, 'bicubic'),
        ('border', 0.875, 0, 'bilinear'),
        ('border', 1.0, 0, 'bicubic'),
        ('border', 0.9, 4, 'bilinear'),
        ('center', 0.875, 5, 'bilinear'),
        ('center', 1.0, 2, 'bicubic'),
    ],
)
def test_pixels_are_timms_eval_transform(images, mode, crop_pct, border, interpolation):
    cfg = data.DataConfig(
        img_size=IMG, crop_pct=crop_pct, crop_mode=mode, crop_border_pixels=border, interpolation=interpolation
    )
    ours = [eval_crops.eval_image(tf.io.read_file(str(path)), cfg).numpy().astype(int) for path in images]
    for path, image in zip(images, ours):
        expected = timm_pixels(path, mode, crop_pct, border, interpolation)
        assert image.shape == expected.shape == (IMG, IMG, 3)
        assert np.abs(image - expected).max() <= 1, path.name
    other = 'squash' if mode != 'squash' else 'border'  # on the wide image a wrong mode is far off
    assert np.abs(ours[0] - timm_pixels(images[0], other, crop_pct, border, interpolation)).max() > 10


def test_border_fill_is_the_mean_colour(images):
    mean = (0.1, 0.5, 0.9)
    cfg = data.DataConfig(img_size=IMG, crop_pct=1.0, crop_mode='border', mean=mean)
    ours = eval_crops.eval_image(tf.io.read_file(str(images[0])), cfg).numpy()  # 61x47: rows padded
    np.testing.assert_array_equal(ours[0, 0], [26, 128, 230])
    assert np.abs(ours.astype(int) - timm_pixels(images[0], 'border', 1.0, 0, 'bilinear', mean)).max() <= 1


def test_a_border_larger_than_the_image_keeps_its_middle(images):
    """timm fails on such an image (an empty crop); here the middle pixels along the short side stay."""
    cfg = data.DataConfig(img_size=IMG, crop_pct=1.0, crop_mode='squash', crop_border_pixels=30)
    image = eval_crops.eval_image(tf.io.read_file(str(images[3])), cfg).numpy()  # 33 x 80: 20 x 1 px left
    middle = Image.fromarray(np.asarray(Image.open(images[3]).convert('RGB'))[30:50, 16:17])
    expected = np.asarray(middle.resize((IMG, IMG), Image.BILINEAR))
    assert image.shape == (IMG, IMG, 3)
    assert np.abs(image.astype(int) - expected).max() <= 1


def test_the_pipeline_uses_the_crop_mode(images, tmp_path):
    """load_datasets' validation split goes through --crop-mode; the training split is untouched by it."""
    root = tmp_path / 'ds'
    for split in ('train', 'validation'):
        (root / split / 'a').mkdir(parents=True)
        for path in images:
            (root / split / 'a' / path.name).write_bytes(path.read_bytes())
    cfg = dict(data_dir=str(root), img_size=IMG, crop_pct=0.875, num_workers=1, hflip=0.0)
    batches = {}
    for mode in ('center', 'squash'):
        train, val = data.load_datasets(data.DataConfig(crop_mode=mode, **cfg))
        batches[mode] = next(val.eval_batches(val.num_examples)), next(train.train_batches(train.num_examples, 0))
        for path, image in zip(val.paths, batches[mode][0]['image']):
            assert np.abs(image.astype(int) - timm_pixels(path, mode, 0.875, 0, 'bilinear')).max() <= 1
    np.testing.assert_array_equal(batches['center'][1]['image'], batches['squash'][1]['image'])


@pytest.mark.parametrize(
    'field, value, message',
    [('crop_mode', 'centre', '--crop-mode must be one of'), ('crop_border_pixels', -1, '--crop-border-pixels')],
)
def test_bad_values_are_one_line(field, value, message):
    with pytest.raises(UserError, match=message):
        data.check_config(data.DataConfig(**{field: value}))
