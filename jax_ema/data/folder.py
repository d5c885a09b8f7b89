"""Image folders: finding splits and classes as timm does, listing and checking the images.

Layouts: DATA/<train_split>/<class>/<image> beside DATA/<val_split>/<class>/<image> (source 'splits'),
or DATA/<class>/<image> split stratified by `val_split_fraction` (source 'folders').
"""

import logging
import math
import os
import re
from concurrent import futures

import numpy as np
import tensorflow as tf  # already imported, after triton, by jax_ema.data
import tensorflow_datasets as tfds
from PIL import Image

from jax_ema.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # timm's IMG_EXTENSIONS, matched in any letter case
TRAIN_SPLIT_SYNONYMS = ('train', 'training')  # timm.data.dataset_factory, in its search order
EVAL_SPLIT_SYNONYMS = ('val', 'valid', 'validation', 'eval', 'evaluation')
SPLIT_SEED = 0  # the train/validation split of 'folders' and 'digits' never depends on --seed
_READABLE_FORMATS = ('JPEG', 'MPO', 'PNG')  # what PIL may call a file we decode with TF's jpeg/png ops

log = logging.getLogger(__name__)


def natural_key(text: str) -> list:
    """timm's sort key (timm.utils.misc.natural_key): lower case, digit runs compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text.lower())]


def stratified_split(labels: np.ndarray, fraction: float, class_names, where: str):
    """(train, val) index arrays in increasing order; each class gives round(fraction * its size)."""
    rng = np.random.default_rng(SPLIT_SEED)
    val = []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        n_val = math.floor(fraction * len(members) + 0.5)
        if not 1 <= n_val < len(members):
            raise UserError(f'class {name!r} in {where} has {len(members)} images, too few to put a '
                            f'fraction {fraction} of them into validation; add images or make '
                            'train/validation split folders')
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val), val


def load_folders(cfg) -> tuple[str, list[str], tuple, tuple]:
    """(source, class names, (train paths, labels), (val paths, labels)) of the folders at cfg.data_dir."""
    root = os.path.abspath(os.path.expanduser(cfg.data_dir))
    if not os.path.exists(root):
        raise UserError(f'data folder {root} does not exist; pass an existing folder as DATA '
                        '(or none for the built-in digits)')
    if not os.path.isdir(root):
        raise UserError(f'DATA {root} is not a folder; pass a folder holding <class>/<image> or '
                        'train/<class>/<image> and validation/<class>/<image>')
    train_dir = _search_split(root, cfg.train_split, TRAIN_SPLIT_SYNONYMS)
    val_dir = _search_split(root, cfg.val_split, EVAL_SPLIT_SYNONYMS)
    skipped = []
    if train_dir is not None:
        if val_dir is None:
            tried = ', '.join(_split_candidates(cfg.val_split, EVAL_SPLIT_SYNONYMS))
            raise UserError(f'{train_dir} has no validation folder beside it (looked for {tried}); '
                            'add one, name it with --val-split, or put the class folders directly in DATA')
        _check_split_folders(root, train_dir, val_dir)
        train_classes, val_classes = _scan(train_dir, skipped), _scan(val_dir, skipped)
        if sorted(train_classes) != sorted(val_classes):
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise UserError(f'class folders differ between {train_dir} and {val_dir} (only in train: '
                            f'{only_train}, only in validation: {only_val}); give both the same class folders')
        names = _class_names(train_classes)
        train = _examples(train_classes, names, train_dir)
        val = _examples(val_classes, names, val_dir)
        source = 'splits'
    else:
        if cfg.train_split not in TRAIN_SPLIT_SYNONYMS or val_dir is not None:
            found = f' but {val_dir} exists' if val_dir is not None else ''
            raise UserError(f'no train split folder {os.path.join(root, cfg.train_split)}{found}; add it, '
                            'name it with --train-split, or put the class folders directly in DATA')
        classes = _scan(root, skipped)
        names = _class_names(classes)
        paths, labels = _examples(classes, names, root)
        train_rows, val_rows = stratified_split(labels, cfg.val_split_fraction, names, root)
        train = ([paths[i] for i in train_rows], labels[train_rows])
        val = ([paths[i] for i in val_rows], labels[val_rows])
        source = 'folders'
    if skipped:
        log.warning('skipped %d entries under %s that are not %s images (first: %s)', len(skipped),
                    root, '/'.join(IMAGE_EXTENSIONS), skipped[0])
    _verify_images(train[0] + val[0], cfg.num_workers)
    return source, names, train, val


def _split_candidates(split: str, synonyms) -> list[str]:
    return [split] + [s for s in synonyms if s != split] if split in synonyms else [split]


def _search_split(root: str, split: str, synonyms) -> str | None:
    """timm's rule: DATA/<split>; if missing and <split> is a known synonym, the first synonym present."""
    for name in _split_candidates(split, synonyms):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _check_split_folders(root: str, train_dir: str, val_dir: str) -> None:
    """Uses tfds ImageFolder to confirm that both split folders hold images.

    tfds.folder_dataset.ImageFolder reads DATA/<split>/<class>/<image> with extensions in any letter
    case, but for the rest we do our own listing and reading, because it: sorts class names plainly,
    not naturally as timm; returns examples in a shuffle keyed by the split name, only sequentially
    (no random access for our (seed, epoch) order; its shuffle_files is unseeded); drops other files
    without counting them; merges class names across splits without comparing them; and decodes JPEG
    with TF's fast integer DCT, up to ~9 levels off PIL (timm), where INTEGER_ACCURATE matches PIL.
    """
    try:
        splits = tfds.folder_dataset.ImageFolder(root).info.splits
    except (OSError, tf.errors.OpError) as err:
        raise UserError(f'cannot read {root}: {err}; check its permissions') from err
    for folder in (train_dir, val_dir):
        if os.path.basename(folder) not in splits:
            raise UserError(f'no {"/".join(IMAGE_EXTENSIONS)} images found in class folders under '
                            f'{folder}; put images into {folder}/<class>/')


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as err:
        raise UserError(f'cannot read {folder}: {err}; check that it exists and is readable') from err


def _scan(root: str, skipped: list[str]) -> dict[str, list[str]]:
    """Class folder name -> its image files (root/<class>/<image>); everything else goes to `skipped`.

    Hidden entries (.DS_Store, .ipynb_checkpoints, ...) are skipped too; nested folders are not searched.
    """
    classes = {}
    for name in _listdir(root):
        folder = os.path.join(root, name)
        if name.startswith('.') or not os.path.isdir(folder):
            skipped.append(folder)
            continue
        images = []
        for file in _listdir(folder):
            path = os.path.join(folder, file)
            is_image = os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(path)
            (images if is_image and not file.startswith('.') else skipped).append(path)
        classes[name] = images
    if not any(classes.values()):
        raise UserError(f'no {"/".join(IMAGE_EXTENSIONS)} images found in class folders under {root}; '
                        f'put images into {root}/<class>/ (or {root}/train/<class>/ and '
                        f'{root}/validation/<class>/)')
    for name, images in classes.items():
        if not images:
            raise UserError(f'class folder {os.path.join(root, name)} holds no '
                            f'{"/".join(IMAGE_EXTENSIONS)} images; add images or remove the folder')
    return classes


def _class_names(classes: dict) -> list[str]:
    """Folder names in timm's natural order (ties of letter case broken by the plain name)."""
    return sorted(classes, key=lambda name: (natural_key(name), name))


def _examples(classes: dict, names: list[str], root: str) -> tuple[list[str], np.ndarray]:
    """(paths, labels) sorted naturally by path, as timm's find_images_and_targets."""
    pairs = [(path, label) for label, name in enumerate(names) for path in classes[name]]
    pairs.sort(key=lambda pair: (natural_key(os.path.relpath(pair[0], root)), pair[0]))
    return [p for p, _ in pairs], np.array([label for _, label in pairs], np.int32)


def _verify_image(path: str) -> str | None:
    """None if PIL fully decodes `path` as JPEG/PNG, else what is wrong (JPEGs decoded at 1/8 size)."""
    try:
        with Image.open(path) as image:
            if image.format not in _READABLE_FORMATS:
                return f'it is a {image.format} image, not JPEG or PNG'
            image.draft('RGB', (1, 1))  # JPEG: DCT scaling, still reads all data; others: no-op
            image.load()
    except Exception as err:  # pylint: disable=broad-except  (PIL raises many kinds for bad files)
        return str(err) or type(err).__name__
    return None


def _verify_images(paths: list[str], num_workers: int) -> None:
    """Decodes every image once, so that a bad file stops the run now rather than mid-epoch."""
    with futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        for path, problem in zip(paths, pool.map(_verify_image, paths)):
            if problem is not None:
                raise UserError(f'cannot read image {path} ({problem}); remove or fix it')
