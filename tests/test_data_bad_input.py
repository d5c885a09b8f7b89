"""jax_ema.data's bad input: missing or empty data, class folders that do not fit, unreadable images, odd
file names, a changing folder, options out of range."""

import logging
import os
import re

import numpy as np
import pytest

import data_world
from data_world import IMG, concat, load, make_classes, save_image
from jax_ema import data
from jax_ema.errors import UserError

digits, listing_cache = data_world.digits, data_world.listing_cache  # fixtures


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
