"""The data tests' world (test_data*.py, test_timm_*.py): image folders they write, the built-in digits,
the listing-cache fixture and small batch helpers. A test module takes a fixture by binding it:
`listing_cache = data_world.listing_cache`.
"""

import os

import numpy as np
import pytest
from PIL import Image

from jax_ema import data  # the one module that imports tensorflow (after triton, see _compat)

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


def class_folders(root, classes, splits=('train', 'validation'), per_class=3):
    """root/<split>/<class>/<i>.png: `per_class` noise images of varying heights in each class of each split."""
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(36 + 4 * i, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f'{i}.png')
    return root


def load(root, **kwargs):
    return data.load_datasets(data.DataConfig(data_dir=str(root), img_size=IMG, **kwargs))
