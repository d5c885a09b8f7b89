"""Tests for jax_ema.data: sources, determinism, sharding (transforms against timm's: test_data_transforms.py;
bad input: test_data_bad_input.py)."""

import logging
import os

import numpy as np
import pytest

import data_world
from data_world import IMG, concat, first, make_classes
from jax_ema import data

digits, listing_cache, splits_dir = data_world.digits, data_world.listing_cache, data_world.splits_dir  # fixtures


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
