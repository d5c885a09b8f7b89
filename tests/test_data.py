"""Tests for jax_ema.data: sources, transforms (against timm's), determinism, sharding, bad input."""

import logging
import os
import random
import re

import numpy as np
import pytest
from PIL import Image
from timm.data import transforms as timm_transforms
from timm.data.transforms_factory import transforms_imagenet_eval
from torchvision import transforms as tv_transforms

from jax_ema import (
    data,  # the one module that imports tensorflow (after triton, see _compat)
    device_input,
)
from jax_ema.errors import UserError

tf = data.tf

IMG = 32
SIZES = ((40, 40), (52, 40), (40, 56))  # (width, height)


@pytest.fixture(autouse=True)
def listing_cache(tmp_path_factory, monkeypatch):
    """Folder listings are cached in a folder of this module's own, not in ~/.cache."""
    monkeypatch.setenv(data.folder.CACHE_ENV, str(tmp_path_factory.getbasetemp() / 'listings'))


def save_image(path, mode='RGB', size=(40, 40), seed=0):
    """A noise image of `mode`, saved as JPEG or PNG by the (any-case) extension of `path`."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), 'RGBA')
    fmt = 'JPEG' if os.path.splitext(path)[1].lower() in ('.jpg', '.jpeg') else 'PNG'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.convert(mode).save(path, fmt)


def make_classes(root, classes, per_class, seed=0):
    """root/<class>/<i>.png for each class, of varying sizes."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            save_image(os.path.join(root, name, f'{i}.png'), size=SIZES[i % 3], seed=seed + 100 * c + i)


@pytest.fixture(scope='module')
def splits_dir(tmp_path_factory):
    """DATA/train + DATA/validation; classes cat2 < cat10 < dog in timm's natural order."""
    root = str(tmp_path_factory.mktemp('splits'))
    kinds = [('a.png', 'RGB'), ('b.JPG', 'RGB'), ('c.png', 'L'), ('d.jpeg', 'RGB'), ('e.png', 'RGBA')]
    for c, name in enumerate(['cat2', 'cat10', 'dog']):
        for split, n in (('train', 5), ('validation', 3)):
            for i, (file, mode) in enumerate(kinds[:n]):
                save_image(os.path.join(root, split, name, file), mode, SIZES[(c + i) % 3], seed=c * 10 + i)
    with open(os.path.join(root, 'train', 'dog', 'notes.txt'), 'w') as f:
        f.write('not an image')
    return root


@pytest.fixture(scope='module')
def digits():
    return data.load_datasets(data.DataConfig(img_size=IMG, num_workers=2))


def first(iterator):
    return next(iter(iterator))


def concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# --- sources --------------------------------------------------------------------------------------


def test_split_folders(splits_dir, caplog):
    with caplog.at_level(logging.INFO, logger='jax_ema.data'):
        train, val = data.load_datasets(data.DataConfig(data_dir=splits_dir, img_size=IMG))
    assert train.source == val.source == 'splits'
    assert train.class_names == val.class_names == ('cat2', 'cat10', 'dog')  # natural, not plain, sort
    assert (train.num_examples, val.num_examples) == (15, 9)
    assert any(p.endswith(os.path.join('cat10', 'b.JPG')) for p in train.paths)
    for ds in (train, val):
        for path, label in zip(ds.paths, ds.labels):
            assert os.path.basename(os.path.dirname(path)) == ds.class_names[label]
    skipped = [r.getMessage() for r in caplog.records if 'skipped' in r.getMessage()]
    assert len(skipped) == 1 and 'skipped 1 ' in skipped[0] and 'notes.txt' in skipped[0]
    batch = first(train.train_batches(5, epoch=0))
    assert batch['image'].shape == (5, IMG, IMG, 3) and batch['image'].dtype == np.uint8
    assert batch['label'].dtype == np.int32


def test_class_folders_split_stratified_and_fixed(tmp_path):
    root = str(tmp_path)
    make_classes(root, ['ant', 'bee', 'cow'], per_class=7)
    train, val = data.load_datasets(data.DataConfig(data_dir=root, img_size=IMG, seed=1))
    again, val_again = data.load_datasets(data.DataConfig(data_dir=root, img_size=IMG, seed=99))
    assert train.source == 'folders' and train.class_names == ('ant', 'bee', 'cow')
    assert np.bincount(val.labels).tolist() == [round(0.2 * 7)] * 3
    assert sorted(train.paths + val.paths) == sorted(
        os.path.join(root, c, f) for c in train.class_names for f in os.listdir(os.path.join(root, c))
    )
    assert not set(train.paths) & set(val.paths)
    assert (train.paths, val.paths) == (again.paths, val_again.paths)  # independent of --seed


def test_digits_default(digits):
    from sklearn.datasets import load_digits

    train, val = digits
    assert train.source == 'digits' and train.num_classes == 10
    assert train.num_examples + val.num_examples == 1797
    per_class = np.bincount(load_digits().target)
    np.testing.assert_array_equal(np.bincount(val.labels), np.floor(0.2 * per_class + 0.5))
    np.testing.assert_array_equal(np.bincount(train.labels) + np.bincount(val.labels), per_class)
    train2, val2 = data.load_datasets(data.DataConfig(img_size=IMG, seed=5))
    np.testing.assert_array_equal(val2.labels, val.labels)
    np.testing.assert_array_equal(first(val2.eval_batches(16))['image'], first(val.eval_batches(16))['image'])


@pytest.mark.parametrize(
    'names, val_split, expect',
    [
        (('train', 'val'), 'validation', 'val'),
        (('train', 'val', 'eval'), 'validation', 'val'),  # timm's synonym order
        (('training', 'evaluation'), 'validation', 'evaluation'),
        (('train', 'holdout'), 'holdout', 'holdout'),
    ],
)
def test_split_folder_search(tmp_path, names, val_split, expect):
    for name in names:
        make_classes(str(tmp_path / name), ['a', 'b'], per_class=1)
    _, val = data.load_datasets(data.DataConfig(data_dir=str(tmp_path), val_split=val_split, img_size=IMG))
    assert all(os.path.basename(os.path.dirname(os.path.dirname(p))) == expect for p in val.paths)


# --- transforms against timm ------------------------------------------------------------------------


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


# --- determinism, resume, sharding ---------------------------------------------------------------


def test_train_order_and_augmentation_are_functions_of_seed_epoch_index(digits):
    train, _ = digits
    batch = first(train.train_batches(16, epoch=3))
    np.testing.assert_array_equal(batch['label'], train.labels[data.epoch_order(42, 3, train.num_examples)[:16]])
    np.testing.assert_array_equal(first(train.train_batches(16, epoch=3))['image'], batch['image'])
    # The batch size does not matter: rows 0..15 are the same examples with the same augmentation.
    np.testing.assert_array_equal(concat(list(train.train_batches(8, epoch=3))[:2])['image'], batch['image'])
    other_epoch = first(train.train_batches(16, epoch=4))
    assert not np.array_equal(other_epoch['label'], batch['label'])
    other_seed, _ = data.load_datasets(data.DataConfig(img_size=IMG, seed=7))
    assert not np.array_equal(first(other_seed.train_batches(16, epoch=3))['image'], batch['image'])


def test_same_example_is_augmented_differently_in_another_epoch(digits):
    train, _ = digits
    n, size = train.num_examples, 16
    order0, order1 = data.epoch_order(42, 0, n), data.epoch_order(42, 1, n)
    position1 = np.argsort(order1)  # where each example comes in epoch 1
    row0 = next(r for r in range(size) if position1[order0[r]] < (n // size) * size)  # kept in epoch 1
    row1 = int(position1[order0[row0]])
    image0 = first(train.train_batches(size, 0))['image'][row0]
    image1 = first(train.train_batches(size, 1, start_step=row1 // size))['image'][row1 % size]
    assert not np.array_equal(image0, image1)


def test_start_step_skips_exactly(digits):
    train, _ = digits
    full = list(train.train_batches(256, epoch=1))
    assert len(full) == train.steps_per_epoch(256) == train.num_examples // 256
    rest = list(train.train_batches(256, epoch=1, start_step=3))
    assert len(rest) == len(full) - 3
    for a, b in zip(full[3:], rest):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
    assert list(train.train_batches(256, epoch=1, start_step=len(full))) == []


def test_process_slices_make_the_global_batch(digits):
    train, val = digits
    whole = first(train.train_batches(16, epoch=2, start_step=5))
    parts = [first(train.train_batches(16, epoch=2, start_step=5, process_index=p, process_count=2)) for p in range(2)]
    assert parts[0]['image'].shape[0] == 8
    for key in whole:
        np.testing.assert_array_equal(concat(parts)[key], whole[key])
    whole_eval = list(val.eval_batches(64))
    parts_eval = [list(val.eval_batches(64, process_index=p, process_count=2)) for p in range(2)]
    for step, batch in enumerate(whole_eval):
        joined = concat([parts_eval[0][step], parts_eval[1][step]])
        for key in batch:
            np.testing.assert_array_equal(joined[key], batch[key])


def test_eval_pads_last_batch_with_mask(digits):
    _, val = digits
    size = 64
    assert val.num_examples % size  # the test needs a partial last batch
    batches = list(val.eval_batches(size))
    assert len(batches) == -(-val.num_examples // size)
    assert all(b['image'].shape == (size, IMG, IMG, 3) and b['mask'].dtype == bool for b in batches)
    assert all(b['mask'].all() for b in batches[:-1])
    assert batches[-1]['mask'].sum() == val.num_examples % size
    joined = concat(batches)
    np.testing.assert_array_equal(joined['label'][joined['mask']], val.labels)
    assert not joined['mask'][val.num_examples :].any()


# --- bad input ------------------------------------------------------------------------------------


def load(root, **kwargs):
    return data.load_datasets(data.DataConfig(data_dir=str(root), img_size=IMG, **kwargs))


def test_missing_and_non_folder_data(tmp_path):
    with pytest.raises(UserError, match='nowhere'):
        load(tmp_path / 'nowhere')
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(UserError, match='file.txt'):
        load(tmp_path / 'file.txt')


def test_no_images(tmp_path):
    (tmp_path / 'empty_root').mkdir()
    with pytest.raises(UserError, match='no .*images found.*empty_root'):
        load(tmp_path / 'empty_root')
    (tmp_path / 'only_text' / 'cls').mkdir(parents=True)
    (tmp_path / 'only_text' / 'cls' / 'readme.txt').write_text('x')
    with pytest.raises(UserError, match='no .*images found'):
        load(tmp_path / 'only_text')
    (tmp_path / 'split_text' / 'train' / 'a').mkdir(parents=True)
    make_classes(str(tmp_path / 'split_text' / 'validation'), ['a'], 1)
    with pytest.raises(UserError, match=r'no .*images found.*train'):
        load(tmp_path / 'split_text')


def test_empty_class_folder_is_named(tmp_path):
    make_classes(str(tmp_path), ['full'], per_class=5)
    (tmp_path / 'hollow').mkdir()
    with pytest.raises(UserError, match='hollow'):
        load(tmp_path)


def test_class_folders_differ_between_splits(tmp_path):
    make_classes(str(tmp_path / 'train'), ['cat', 'dog'], 1)
    make_classes(str(tmp_path / 'validation'), ['cat', 'cow'], 1)
    with pytest.raises(UserError, match=r'dog.*cow'):
        load(tmp_path)


def test_num_classes_mismatch(tmp_path):
    make_classes(str(tmp_path), ['a', 'b'], per_class=5)
    with pytest.raises(UserError, match=f'5.* 2 classes .*{re.escape(str(tmp_path))}'):
        load(tmp_path, num_classes=5)
    with pytest.raises(UserError, match='3.* 10 classes .*digits'):
        data.load_datasets(data.DataConfig(img_size=IMG, num_classes=3))


def write_bad(path, content):
    if content == 'truncated':
        save_image(str(path))
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(
    'name, content', [('broken.png', 'truncated'), ('fake.jpg', b'this is text'), ('cut.jpg', 'truncated')]
)
def test_verify_images_names_a_bad_image(tmp_path, name, content):
    """--verify-images decodes every image with the decoder training uses; without it nothing is decoded.
    (A GIF, BMP or WebP named .png is no error: TensorFlow decodes it, as PIL does for timm.)"""
    make_classes(str(tmp_path), ['a', 'b'], per_class=5)
    write_bad(tmp_path / 'b' / name, content)
    with pytest.raises(UserError, match=f'{name}.*remove or fix'):
        load(tmp_path, verify_images=True)
    train, val = load(tmp_path)
    assert str(tmp_path / 'b' / name) in train.paths + val.paths


def slots_of(dataset, epoch, size):
    return concat(list(dataset.train_batches(size, epoch)))


def test_unreadable_image_is_skipped_in_place(tmp_path, caplog):
    """timm's ImageDataset rule: the slot of an image that cannot be read takes the next image of the
    dataset, so the batches are those of a folder where the bad file were a copy of the next one (same
    slot, same augmentation key). In evaluation its row is masked out. Each is counted, the file named."""
    for root in ('bad', 'copy'):
        make_classes(str(tmp_path / root), ['a', 'b'], per_class=5)
    write_bad(tmp_path / 'bad' / 'b' / '2x.png', 'truncated')  # sorts between b/2.png and b/3.png
    cfg = dict(data_dir=None, img_size=IMG, val_split_fraction=0.25, scale=(0.5, 1.0))
    bad_train, bad_val = data.load_datasets(data.DataConfig(**dict(cfg, data_dir=str(tmp_path / 'bad'))))
    for ds in (bad_train, bad_val):  # copy/b/2x.png: the image after it in its split
        if str(tmp_path / 'bad' / 'b' / '2x.png') in ds.paths:
            after = ds.paths[(ds.paths.index(str(tmp_path / 'bad' / 'b' / '2x.png')) + 1) % ds.num_examples]
            source = os.path.join(tmp_path, 'copy', os.path.relpath(after, tmp_path / 'bad'))
            (tmp_path / 'copy' / 'b' / '2x.png').write_bytes(open(source, 'rb').read())
    copy_train, copy_val = data.load_datasets(data.DataConfig(**dict(cfg, data_dir=str(tmp_path / 'copy'))))
    assert [os.path.basename(p) for p in bad_train.paths] == [os.path.basename(p) for p in copy_train.paths]
    in_train = any(p.endswith('2x.png') for p in bad_train.paths)
    bad_ds, copy_ds = (bad_train, copy_train) if in_train else (bad_val, copy_val)
    with caplog.at_level(logging.WARNING, logger='jax_ema.data'):
        if in_train:
            for epoch in (0, 1):
                got, want = slots_of(bad_ds, epoch, 4), slots_of(copy_ds, epoch, 4)
                np.testing.assert_array_equal(got['image'], want['image'])
                np.testing.assert_array_equal(got['label'], want['label'])
                assert bad_ds.skipped_images(epoch) == (
                    1
                    if bad_ds.paths.index(str(tmp_path / 'bad' / 'b' / '2x.png'))
                    in data.epoch_order(42, epoch, bad_ds.num_examples)[: len(got['label'])]
                    else 0
                )
        else:
            got, want = concat(list(bad_ds.eval_batches(3))), concat(list(copy_ds.eval_batches(3)))
            row = bad_ds.paths.index(str(tmp_path / 'bad' / 'b' / '2x.png'))
            assert not got['mask'][row] and want['mask'][row] and bad_ds.skipped_images('eval') == 1
            keep = np.arange(len(got['mask'])) != row
            np.testing.assert_array_equal(got['image'][keep], want['image'][keep])
    named = [r.getMessage() for r in caplog.records if '2x.png' in r.getMessage()]
    assert len(named) == 1 and 'cannot read image' in named[0]  # named once, when found
    assert bad_ds.unreadable.sum() == 1


def test_image_deleted_mid_run_is_skipped(tmp_path, caplog):
    make_classes(str(tmp_path), ['a', 'b'], per_class=5)
    train, _ = load(tmp_path)
    before = slots_of(train, 0, 4)
    gone = train.paths[int(data.epoch_order(42, 1, train.num_examples)[0])]
    os.remove(gone)
    with caplog.at_level(logging.WARNING, logger='jax_ema.data'):
        after = slots_of(train, 1, 4)
    assert after['image'].shape == before['image'].shape and train.skipped_images(1) == 1
    assert any(os.path.basename(gone) in r.getMessage() for r in caplog.records)


def test_file_names_that_are_not_utf8(tmp_path):
    make_classes(str(tmp_path), ['a', 'b'], per_class=5)
    odd = os.path.join(os.fsencode(str(tmp_path)), b'b', b'caf\xe9.png')  # Latin-1, not UTF-8
    os.rename(os.fsencode(str(tmp_path / 'b' / '4.png')), odd)
    train, val = load(tmp_path)
    assert os.fsdecode(odd) in train.paths + val.paths
    for ds in (train, val):
        assert len(concat(list(ds.eval_batches(4)))['label']) >= ds.num_examples
        assert not ds.unreadable.any()


def test_listing_is_cached_and_follows_the_folder(tmp_path, monkeypatch):
    """A warm start lists from the cache (no scan of the class folders); adding, removing or renaming
    an image changes its folder's mtime and so the key."""
    make_classes(str(tmp_path), ['a', 'b'], per_class=5)
    cold, _ = load(tmp_path)
    real_scan = data.folder._scan
    monkeypatch.setattr(data.folder, '_scan', lambda *a: pytest.fail('scanned although cached'))
    warm, _ = load(tmp_path)
    assert warm.paths == cold.paths and np.array_equal(warm.labels, cold.labels)
    monkeypatch.setattr(data.folder, '_scan', real_scan)
    save_image(str(tmp_path / 'a' / '99.png'))
    os.utime(tmp_path / 'a', ns=(1, 1))  # a new mtime even on a coarse-clocked file system
    more, more_val = load(tmp_path)
    assert str(tmp_path / 'a' / '99.png') in more.paths + more_val.paths


def test_batch_size_larger_than_train_split(digits):
    train, _ = digits
    too_big = train.num_examples + 1
    with pytest.raises(UserError, match=f'{too_big}.*{train.num_examples}.*-b'):
        train.train_batches(too_big, epoch=0)  # raises at the call, before iterating
    with pytest.raises(UserError, match=f'{too_big}.*{train.num_examples}'):
        train.steps_per_epoch(too_big)
    with pytest.raises(UserError, match='multiple of 3'):
        train.train_batches(16, epoch=0, process_count=3)


def test_split_folder_problems(tmp_path):
    make_classes(str(tmp_path / 'a' / 'train'), ['x', 'y'], 1)
    with pytest.raises(UserError, match='validation'):
        load(tmp_path / 'a')
    make_classes(str(tmp_path / 'b'), ['x', 'y'], 5)
    with pytest.raises(UserError, match='mytrain'):
        load(tmp_path / 'b', train_split='mytrain')
    make_classes(str(tmp_path / 'c' / 'val'), ['x', 'y'], 1)
    with pytest.raises(UserError, match=r'c/train .*c/val exists'):
        load(tmp_path / 'c')


def test_too_few_images_to_split_a_class(tmp_path):
    make_classes(str(tmp_path), ['many'], per_class=6)
    make_classes(str(tmp_path), ['single'], per_class=1)
    with pytest.raises(UserError, match='single'):
        load(tmp_path)


@pytest.mark.parametrize(
    'option, value, flag',
    [
        ('crop_pct', 0.0, '--crop-pct'),
        ('hflip', 1.5, '--hflip'),
        ('scale', (0.5, 0.1), '--scale'),
        ('val_split_fraction', 1.0, 'fraction'),
    ],
)
def test_bad_options(option, value, flag):
    with pytest.raises(UserError, match=flag):
        data.load_datasets(data.DataConfig(img_size=IMG, **{option: value}))
