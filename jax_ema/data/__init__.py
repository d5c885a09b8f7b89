"""Input pipeline: image folders or the built-in digits, as numpy NHWC batches (tf.data on the CPU).

Sources, by `DataConfig.data_dir`:
  * DATA/<train_split>/<class>/<image> and DATA/<val_split>/<class>/<image>   -> source 'splits'
  * DATA/<class>/<image>, split stratified by `val_split_fraction`           -> source 'folders'
  * None: scikit-learn's bundled 8x8 digits, split stratified 20%            -> source 'digits'

Everything random is a pure function of (seed, epoch, example index): the epoch order is a numpy
permutation of (seed, epoch) and each example's augmentation runs TF stateless random ops keyed by
fold_in(fold_in((seed, 0), epoch), index). Any step of any epoch can thus be reproduced, on any number
of processes. This is the only package of the project that imports tensorflow: here, first, after
triton; its modules folder.py (finding images), transforms.py (per-example transforms),
rand_augment.py + image_ops.py (--aa) and random_erasing.py (--reprob) rely on that.
"""

import dataclasses
from typing import Iterator

import numpy as np

from jax_ema import _compat
from jax_ema.errors import UserError

_compat.preload_triton()  # must precede `import tensorflow`, see _compat
_compat.quiet_tensorflow()
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top

_compat.hide_gpus_from(tf)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_ema.data import rand_augment, random_erasing  # noqa: E402
from jax_ema.data.folder import (EVAL_SPLIT_SYNONYMS, IMAGE_EXTENSIONS, SPLIT_SEED,  # noqa: E402,F401
                                 TRAIN_SPLIT_SYNONYMS, load_folders, natural_key, stratified_split)
from jax_ema.data.transforms import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,  # noqa: E402,F401
                                     INTERPOLATIONS, decode_image, eval_transform, random_resized_crop_box, resize,
                                     train_transform)

_DIGITS_MAX = 16.0  # load_digits pixel values are 0..16


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
    num_workers: int = 4  # -j: parallel map calls and the pipeline's private thread pool (0: sequential)
    auto_augment: str | None = None  # --aa: 'rand-m9-mstd0.5', ... (see rand_augment.GRAMMAR)
    reprob: float = 0.0  # --reprob: random erasing probability
    remode: str = 'pixel'  # --remode: const | rand | pixel
    recount: int = 1  # --recount: at most this many erased boxes per image
    interpolation: str = 'bilinear'  # resizes of the train and eval transforms: bilinear | bicubic
    mean: tuple = IMAGENET_DEFAULT_MEAN  # normalisation, per RGB channel, of [0, 1] values
    std: tuple = IMAGENET_DEFAULT_STD


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
        policy = rand_augment.parse(cfg.auto_augment) if cfg.auto_augment else None

        def transform(image, key):
            return train_transform(image, key, cfg, policy)

        # Traced once per Dataset, not once per epoch's pipeline (RandAugment's graph is large).
        self._train_transform = tf.function(transform, autograph=False, input_signature=[
            tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([2], tf.int64)])

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
            image = self._train_transform(tf.cast(self._read(inputs), tf.float32), example_key)
            return {'image': image, 'label': label}

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
            return {'image': eval_transform(self._read(inputs), self._cfg), 'label': label,
                    'mask': valid}

        return self._batches((self._inputs[index], self.labels[index], mask), load, local)

    def _read(self, inputs):
        """One example as an [H, W, 3] image with values in 0..255 (uint8 or float32)."""
        if self.source == 'digits':  # the 8x8 digit, upscaled (bilinear) to img_size, grey -> RGB
            gray = tf.cast(inputs, tf.float32)[..., None] * (255.0 / _DIGITS_MAX)
            return tf.tile(resize(gray, (self._cfg.img_size, self._cfg.img_size)), (1, 1, 3))
        return decode_image(tf.io.read_file(inputs))

    def _batches(self, columns, load, local_batch_size):
        workers = self._cfg.num_workers
        ds = tf.data.Dataset.from_tensor_slices(columns)
        ds = ds.map(load, num_parallel_calls=workers if workers > 0 else None, deterministic=True)
        ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(2)
        if workers > 0:  # timm's -j worker processes -> at most that many TF threads for this pipeline
            options = tf.data.Options()
            options.threading.private_threadpool_size = workers
            ds = ds.with_options(options)
        return ds.as_numpy_iterator()


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
        source, names, (train_paths, train_labels), (val_paths, val_labels) = load_folders(cfg)
        train = Dataset(cfg, source, names, train_labels, paths=train_paths)
        val = Dataset(cfg, source, names, val_labels, paths=val_paths)
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
        (0 <= cfg.reprob <= 1, f'--reprob must be a probability in [0, 1], got {cfg.reprob}'),
        (cfg.remode.lower() in random_erasing.MODES,
         f'--remode must be one of {"/".join(random_erasing.MODES)}, got {cfg.remode!r}'),
        (cfg.recount >= 1, f'--recount must be >= 1, got {cfg.recount}'),
        (cfg.interpolation in INTERPOLATIONS,
         f'--interpolation must be one of {"/".join(INTERPOLATIONS)}, got {cfg.interpolation!r}'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + '; fix the option')
    if cfg.auto_augment:
        rand_augment.parse(cfg.auto_augment)


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    if batch_size < 1:
        raise UserError(f'batch size must be positive, got {batch_size}; pass -b N with N >= 1')
    if batch_size % process_count:
        raise UserError(f'batch size {batch_size} does not divide among {process_count} processes; '
                        f'pass a -b that is a multiple of {process_count}')
    if not 0 <= process_index < process_count:
        raise UserError(f'process index {process_index} is not in [0, {process_count})')
    return batch_size // process_count


def _load_digits(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    pixels, labels = digits.images.astype(np.float32), digits.target.astype(np.int32)
    names = [str(c) for c in range(10)]
    train, val = stratified_split(labels, cfg.val_split_fraction, names, 'the digits data')
    return (Dataset(cfg, 'digits', names, labels[train], pixels=pixels[train]),
            Dataset(cfg, 'digits', names, labels[val], pixels=pixels[val]))
