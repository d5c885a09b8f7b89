"""Input pipeline: image folders or the built-in digits, as numpy NHWC batches (tf.data on the CPU).

Sources, by `DataConfig.data_dir`:
  * DATA/<train_split>/<class>/<image> and DATA/<val_split>/<class>/<image>   -> source 'splits'
  * DATA/<class>/<image>, split stratified by `val_split_fraction`           -> source 'folders'
  * None: scikit-learn's bundled 8x8 digits, split stratified 20%            -> source 'digits'

Everything random is a pure function of (seed, epoch, example index): the epoch order is a numpy
permutation of (seed, epoch) and each example's augmentation runs TF stateless random ops keyed by
fold_in(fold_in((seed, 0), epoch), index). Any step of any epoch can thus be reproduced, on any number
of processes. This is the only module of the project that imports tensorflow.
"""

import dataclasses
import logging
import math
import os
import re
from concurrent import futures
from typing import Iterator

import numpy as np
from PIL import Image

from jax_ema import _compat
from jax_ema.errors import UserError

_compat.preload_triton()  # must precede `import tensorflow`, see _compat
_compat.quiet_tensorflow()
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # noqa: E402  pylint: disable=g-import-not-at-top

_compat.hide_gpus_from(tf)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # timm's IMG_EXTENSIONS, matched in any letter case
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data.constants
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
TRAIN_SPLIT_SYNONYMS = ('train', 'training')  # timm.data.dataset_factory, in its search order
EVAL_SPLIT_SYNONYMS = ('val', 'valid', 'validation', 'eval', 'evaluation')
SPLIT_SEED = 0  # the train/validation split of 'folders' and 'digits' never depends on --seed
_READABLE_FORMATS = ('JPEG', 'MPO', 'PNG')  # what PIL may call a file we decode with TF's jpeg/png ops
_DIGITS_MAX = 16.0  # load_digits pixel values are 0..16

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images are and how to augment them; names follow timm's train.py flags."""
    data_dir: str | None = None
    train_split: str = 'train'
    val_split: str = 'validation'
    val_split_fraction: float = 0.2
    img_size: int = 224
    num_classes: int | None = None
    seed: int = 42
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = 0.875
    num_workers: int = 4


def natural_key(text: str) -> list:
    """timm's sort key (timm.utils.misc.natural_key): lower case, digit runs compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text.lower())]


class Dataset:
    """One split: examples in a fixed order (index = position), batched on demand."""

    def __init__(self, cfg: DataConfig, source: str, class_names: list[str], labels: np.ndarray,
                 paths: list[str] | None = None, pixels: np.ndarray | None = None):
        self.source = source
        self.class_names = tuple(class_names)
        self.num_classes = len(class_names)
        self.labels = labels.astype(np.int32)
        self.num_examples = len(labels)
        self.paths = paths  # image files ('splits', 'folders'); None for 'digits'
        self._inputs = np.asarray(paths) if paths is not None else pixels
        self._cfg = cfg

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full training batches per epoch (the last partial one is dropped, as timm's drop_last)."""
        if not 1 <= batch_size <= self.num_examples:
            raise UserError(f'batch size {batch_size} does not fit the {self.num_examples} training '
                            f'images; pass a -b between 1 and {self.num_examples}')
        return self.num_examples // batch_size

    def train_batches(self, batch_size: int, epoch: int, start_step: int = 0, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict]:
        """Augmented batches {'image', 'label'} of epoch `epoch`, from step `start_step` on.

        `batch_size` is global; this process gets rows [process_index * b, (process_index + 1) * b) of
        every global batch, b = batch_size / process_count.
        """
        steps = self.steps_per_epoch(batch_size)
        local = _local_batch_size(batch_size, process_index, process_count)
        if epoch < 0 or not 0 <= start_step <= steps:
            raise UserError(f'epoch {epoch}, step {start_step} is not in an epoch of {steps} steps; '
                            'resume from a checkpoint made with this data and batch size')
        rows = _rows(start_step, steps, batch_size, process_index, local)
        index = epoch_order(self._cfg.seed, epoch, self.num_examples)[rows]
        key = tf.random.experimental.stateless_fold_in(tf.constant([self._cfg.seed, 0], tf.int64), epoch)

        def load(inputs, label, i):
            example_key = tf.random.experimental.stateless_fold_in(key, i)
            return {'image': _train_transform(self._read(inputs), example_key, self._cfg), 'label': label}

        return self._batches((self._inputs[index], self.labels[index], index), load, local)

    def eval_batches(self, batch_size: int, process_index: int = 0, process_count: int = 1
                     ) -> Iterator[dict]:
        """All examples in order, centre-cropped: {'image', 'label', 'mask'}.

        The last global batch is padded to `batch_size` with rows whose mask is False, so every batch
        has one shape. Rows are split between processes as in `train_batches`.
        """
        local = _local_batch_size(batch_size, process_index, process_count)
        rows = _rows(0, -(-self.num_examples // batch_size), batch_size, process_index, local)
        mask = rows < self.num_examples
        index = np.where(mask, rows, 0)

        def load(inputs, label, valid):
            return {'image': _eval_transform(self._read(inputs), self._cfg), 'label': label,
                    'mask': valid}

        return self._batches((self._inputs[index], self.labels[index], mask), load, local)

    def _read(self, inputs):
        """One example as an [H, W, 3] image with values in 0..255 (uint8 or float32)."""
        if self.source == 'digits':  # the 8x8 digit, upscaled (bilinear) to img_size, grey -> RGB
            gray = tf.cast(inputs, tf.float32)[..., None] * (255.0 / _DIGITS_MAX)
            return tf.tile(_resize(gray, (self._cfg.img_size, self._cfg.img_size)), (1, 1, 3))
        return _decode_image(tf.io.read_file(inputs))

    def _batches(self, columns, load, local_batch_size):
        workers = self._cfg.num_workers
        ds = tf.data.Dataset.from_tensor_slices(columns)
        ds = ds.map(load, num_parallel_calls=workers if workers > 0 else None, deterministic=True)
        return ds.batch(local_batch_size, drop_remainder=True).prefetch(2).as_numpy_iterator()


def _rows(first_step, steps, batch_size, process_index, local_batch_size) -> np.ndarray:
    """Positions in the epoch of this process's rows of global batches first_step..steps-1."""
    starts = np.arange(first_step, steps)[:, None] * batch_size + process_index * local_batch_size
    return (starts + np.arange(local_batch_size)).reshape(-1)


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the examples: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def load_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, validation) for `cfg`; all input is checked here, every image decoded once."""
    _check_config(cfg)
    if cfg.data_dir is None:
        train, val = _load_digits(cfg)
    else:
        train, val = _load_folders(cfg)
    if cfg.num_classes is not None and cfg.num_classes != train.num_classes:
        where = cfg.data_dir if cfg.data_dir is not None else 'the built-in digits data (no DATA given)'
        raise UserError(f'--num-classes is {cfg.num_classes} but {train.num_classes} classes were found '
                        f'in {where}; pass --num-classes {train.num_classes} or fix the class folders')
    return train, val


def _check_config(cfg: DataConfig) -> None:
    checks = [
        (cfg.img_size >= 1, f'--img-size must be positive, got {cfg.img_size}'),
        (0 < cfg.val_split_fraction < 1,
         f'the validation fraction must be between 0 and 1, got {cfg.val_split_fraction}'),
        (0 < cfg.scale[0] <= cfg.scale[1] <= 1, f'--scale must be 0 < min <= max <= 1, got {cfg.scale}'),
        (0 < cfg.ratio[0] <= cfg.ratio[1], f'--ratio must be 0 < min <= max, got {cfg.ratio}'),
        (0 <= cfg.hflip <= 1, f'--hflip must be a probability in [0, 1], got {cfg.hflip}'),
        (0 < cfg.crop_pct <= 1, f'--crop-pct must be in (0, 1], got {cfg.crop_pct}'),
        (cfg.num_workers >= 0, f'--workers must be >= 0, got {cfg.num_workers}'),
        (cfg.seed >= 0, f'--seed must be >= 0, got {cfg.seed}'),
        (cfg.num_classes is None or cfg.num_classes >= 1,
         f'--num-classes must be positive, got {cfg.num_classes}'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + '; fix the option')


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    if batch_size < 1:
        raise UserError(f'batch size must be positive, got {batch_size}; pass -b N with N >= 1')
    if batch_size % process_count:
        raise UserError(f'batch size {batch_size} does not divide among {process_count} processes; '
                        f'pass a -b that is a multiple of {process_count}')
    if not 0 <= process_index < process_count:
        raise UserError(f'process index {process_index} is not in [0, {process_count})')
    return batch_size // process_count


def _stratified_split(labels: np.ndarray, fraction: float, class_names, where: str):
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


def _load_digits(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    pixels, labels = digits.images.astype(np.float32), digits.target.astype(np.int32)
    names = [str(c) for c in range(10)]
    train, val = _stratified_split(labels, cfg.val_split_fraction, names, 'the digits data')
    return (Dataset(cfg, 'digits', names, labels[train], pixels=pixels[train]),
            Dataset(cfg, 'digits', names, labels[val], pixels=pixels[val]))


# --- image folders ---------------------------------------------------------------------------------

def _load_folders(cfg: DataConfig) -> tuple[Dataset, Dataset]:
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
        train_rows, val_rows = _stratified_split(labels, cfg.val_split_fraction, names, root)
        train = ([paths[i] for i in train_rows], labels[train_rows])
        val = ([paths[i] for i in val_rows], labels[val_rows])
        source = 'folders'
    if skipped:
        log.warning('skipped %d entries under %s that are not %s images (first: %s)', len(skipped),
                    root, '/'.join(IMAGE_EXTENSIONS), skipped[0])
    _verify_images(train[0] + val[0], cfg.num_workers)
    return (Dataset(cfg, source, names, train[1], paths=train[0]),
            Dataset(cfg, source, names, val[1], paths=val[0]))


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


# --- transforms ------------------------------------------------------------------------------------

def _decode_image(data):
    """[H, W, 3] uint8: JPEG with the accurate DCT (bit-identical to PIL), PNG; grey/RGBA/palette -> RGB."""
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
                   lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8))


def _resize(image, size):
    """Bilinear with antialiasing (as PIL's resize), rounded back to whole pixel values as PIL's uint8."""
    return tf.round(tf.image.resize(image, size, method='bilinear', antialias=True))


def _normalize(image):
    """0..255 -> [0, 1] -> (x - mean) / std, float32."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(IMAGENET_DEFAULT_MEAN)) / tf.constant(IMAGENET_DEFAULT_STD)


def random_resized_crop_box(key, height, width, scale, ratio):
    """(top, left, crop_height, crop_width) by timm's RandomResizedCropAndInterpolation.get_params.

    Ten tries of area ~ U(scale) * H * W and log aspect ~ U(log ratio); the first crop that fits wins,
    at a uniform offset. If none fits: a centre crop clamped to the ratio range. `key` seeds TF's
    stateless random ops, so the box is a pure function of it.
    """
    keys = tf.random.experimental.stateless_split(key, 3)
    h_img, w_img = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = tf.random.stateless_uniform([10], keys[0], scale[0], scale[1], tf.float64) * h_img * w_img
    aspect = tf.exp(tf.random.stateless_uniform([10], keys[1], math.log(ratio[0]), math.log(ratio[1]),
                                                tf.float64))
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # round half to even, as Python
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    # (> 0 is ours: timm would fail on an empty crop, possible only for images of a few pixels.)
    fits = (crop_w <= width) & (crop_h <= height) & (crop_w > 0) & (crop_h > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    in_ratio = w_img / h_img
    lo, hi = min(ratio), max(ratio)
    fallback_w = tf.where(in_ratio > hi, tf.cast(tf.round(h_img * hi), tf.int32), width)
    fallback_h = tf.where(in_ratio < lo, tf.cast(tf.round(w_img / lo), tf.int32), height)
    found = tf.reduce_any(fits)
    crop_h = tf.where(found, crop_h[first], fallback_h)
    crop_w = tf.where(found, crop_w[first], fallback_w)
    # randint(0, H - h) inclusive, from a uniform draw in [0, 1).
    offsets = tf.random.stateless_uniform([2], keys[2], dtype=tf.float64)
    top = tf.cast(tf.floor(offsets[0] * tf.cast(height - crop_h + 1, tf.float64)), tf.int32)
    left = tf.cast(tf.floor(offsets[1] * tf.cast(width - crop_w + 1, tf.float64)), tf.int32)
    top = tf.where(found, top, (height - crop_h) // 2)
    left = tf.where(found, left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def _train_transform(image, key, cfg: DataConfig):
    """Random-resized crop to img_size (bilinear), horizontal flip with probability hflip, normalise."""
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    shape = tf.shape(image)
    top, left, crop_h, crop_w = random_resized_crop_box(crop_key, shape[0], shape[1], cfg.scale,
                                                        cfg.ratio)
    crop = _resize(image[top:top + crop_h, left:left + crop_w], (cfg.img_size, cfg.img_size))
    flip = tf.random.stateless_uniform([], flip_key) < cfg.hflip
    crop = tf.cond(flip, lambda: tf.image.flip_left_right(crop), lambda: crop)
    return _normalize(crop)


def _eval_transform(image, cfg: DataConfig):
    """Shorter side to floor(img_size / crop_pct), centre crop img_size (torchvision rounding), normalise."""
    short_target = math.floor(cfg.img_size / cfg.crop_pct)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(height, width)
    # torchvision Resize(int): short side -> target, long side -> int(target * long / short).
    new_h = tf.where(height <= width, short_target,
                     tf.cast(tf.floor(short_target * height / short), tf.int32))
    new_w = tf.where(width < height, short_target,
                     tf.cast(tf.floor(short_target * width / short), tf.int32))
    image = _resize(image, tf.stack([new_h, new_w]))
    top = tf.cast(tf.round(tf.cast(new_h - cfg.img_size, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - cfg.img_size, tf.float64) / 2), tf.int32)
    image = image[top:top + cfg.img_size, left:left + cfg.img_size]
    return _normalize(tf.ensure_shape(image, (cfg.img_size, cfg.img_size, 3)))
