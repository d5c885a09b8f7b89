"""Input pipeline: image folders or the built-in digits, as uint8 NHWC batches (tf.data on the CPU).

Sources, by `DataConfig.dataset` and `DataConfig.data_dir`:
  * dataset tfds/NAME: a prepared TFDS dataset in data_dir, read by example index (tfds.py) -> source 'tfds'
  * DATA/<train_split>/<class>/<image> and DATA/<val_split>/<class>/<image>   -> source 'splits'
  * DATA/<class>/<image>, split stratified by `val_split_fraction`           -> source 'folders'
  * None: scikit-learn's bundled 8x8 digits, split stratified 20%            -> source 'digits'

Everything random is a pure function of (seed, epoch, example index): the epoch order is a numpy
permutation of (seed, epoch) and each example's augmentation runs TF stateless random ops keyed by
fold_in(fold_in((seed, 0), epoch), index). Batches leave as uint8; the steps normalise them and apply
random erasing on the device (jax_ema/device_input.py). An image that cannot be read is skipped in
place (timm's ImageDataset rule): its slot takes the next example of the dataset, so the batches stay
a pure function of (seed, epoch, index); in evaluation its row is masked out. This is the only package
of the project that imports tensorflow: here, first, after triton; its modules folder.py (finding
images), transforms.py (per-example transforms), rand_augment.py + image_ops.py (--aa), color.py (colour
jitter, greyscale, blur) rely on that; sampler.py (--aug-repeats) is numpy only.
"""

import dataclasses
import logging
import math
import os
from collections.abc import Iterator

import numpy as np

from jax_ema import _compat
from jax_ema.device_input import ERASING_MODES, DeviceInput
from jax_ema.errors import UserError
from jax_ema.flags import data as data_flags

_compat.preload_triton()  # must precede `import tensorflow`, see _compat
_compat.quiet_tensorflow()
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top

_compat.hide_gpus_from(tf)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_ema.data import color, rand_augment, sampler, tfds  # noqa: E402
from jax_ema.data.folder import (  # noqa: E402,F401
    EVAL_SPLIT_SYNONYMS,
    IMAGE_EXTENSIONS,
    SPLIT_SEED,
    TRAIN_SPLIT_SYNONYMS,
    error_reason,
    load_folders,
    natural_key,
    printable,
    stratified_split,
    verify_images,
)
from jax_ema.data.transforms import (  # noqa: E402,F401
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    KERNELS,
    eval_transform,
    random_resized_crop_box,
    resize,
    train_transform,
)

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
    num_workers: int | None = None  # -j: parallel map calls and threads (None: sized to the host; 0: one)
    auto_augment: str | None = None  # --aa: 'rand-m9-mstd0.5', ... (see rand_augment.GRAMMAR)
    reprob: float = 0.0  # --reprob: random erasing probability (applied on the device)
    remode: str = 'pixel'  # --remode: const | rand | pixel
    recount: int = 1  # --recount: at most this many erased boxes per image
    mean: tuple = IMAGENET_DEFAULT_MEAN  # normalisation (on the device), timm's per-model mean/std
    std: tuple = IMAGENET_DEFAULT_STD
    interpolation: str = 'bilinear'  # resize filter (timm's names): bilinear | bicubic | lanczos | box
    verify_images: bool = False  # --verify-images: decode every image once before training
    dataset: str = ''  # --dataset: '' or folder/... (data_dir is the folder), tfds/NAME (data_dir is TFDS's)
    input_key: str = 'image'  # --input-key, --target-key: the TFDS features read
    target_key: str = 'label'
    download: bool = False  # --dataset-download: let TFDS prepare the dataset
    in_chans: int = 3  # --in-chans: 1 makes the batches greyscale on the device (DeviceInput)
    # timm's train augmentation beyond crop and flip (color.py); off here, timm's defaults come from the CLI.
    vflip: float = 0.0  # --vflip: vertical flip probability
    color_jitter: tuple = ()  # --color-jitter: 1, 3 or 4 factors (brightness, contrast, saturation[, hue]); () off
    color_jitter_prob: float | None = None  # --color-jitter-prob: jitter with this probability (None: always)
    grayscale_prob: float = 0.0  # --grayscale-prob
    gaussian_blur_prob: float = 0.0  # --gaussian-blur-prob
    train_interpolation: str | None = None  # --train-interpolation: also 'random'; None: `interpolation`
    no_aug: bool = False  # --no-aug: train on resize + centre crop, no augmentation (timm's transforms_noaug_train)
    aug_repeats: float = 0  # --aug-repeats: each example this many times per epoch (sampler.py)
    class_map: str = ''  # --class-map: class folder -> index file (.txt or .pkl)
    channels: int = 3  # --input-img-mode: 3 (RGB) or 1 (L, PIL's luma)
    epoch_repeats: float = 0.0  # --epoch-repeats: passes over the training set per epoch
    updates_per_epoch: int | None = None  # --train-batches-per-epoch / --grad-accum-steps
    train_crop_mode: str = 'rrc'  # --train-crop-mode: rrc (RandomResizedCrop), rkrc, rkrr (crop_modes.py)


class Dataset:
    """One split: examples in a fixed order (index = position), batched on demand."""

    def __init__(
        self,
        cfg: DataConfig,
        source: str,
        class_names: list[str],
        labels: np.ndarray | None,
        paths: list[str] | None = None,
        pixels: np.ndarray | None = None,
        records: tfds.Records | None = None,
    ):
        self.source = source
        self.class_names = tuple(class_names)
        self.num_classes = len(class_names)
        self.records = records  # 'tfds': examples by index, labels read with the images (None up front)
        self.labels = None if records is not None else labels.astype(np.int32)
        self.num_examples = records.num_examples if records is not None else len(labels)
        self.paths = paths  # image files ('splits', 'folders'); None for 'digits' and 'tfds'
        if records is not None:
            self._inputs, self._labels = np.arange(self.num_examples), np.zeros(self.num_examples, np.int32)
        else:
            self._inputs = np.array([os.fsencode(p) for p in paths], dtype=object) if paths is not None else pixels
            self._labels = self.labels
        self._cfg = cfg
        self.device_input = DeviceInput(
            mean=channel_stats(cfg.mean, cfg.channels),
            std=channel_stats(cfg.std, cfg.channels),
            reprob=0.0 if cfg.no_aug else cfg.reprob,  # timm: no random erasing under --no-aug
            remode=cfg.remode.lower(),
            recount=cfg.recount,
            seed=cfg.seed,
            in_chans=cfg.in_chans,
        )
        self.unreadable = np.zeros(self.num_examples, bool)  # found so far; skipped from then on
        self.skipped = {}  # epoch -> training slots whose image was replaced ('eval': rows masked out)
        policy = rand_augment.parse(cfg.auto_augment) if cfg.auto_augment else None
        decoded = source == 'digits' or (records is not None and records.decoded)
        if records is not None:
            spec = tf.TensorSpec([], tf.int64)
        else:
            spec = tf.TensorSpec(pixels.shape[1:], tf.float32) if decoded else tf.TensorSpec([], tf.string)

        def read(inputs, label):  # (a file's bytes or a digit decoded, label); a TFDS record gives both
            if records is not None:
                return records.read(inputs)
            return (self._decoded(inputs) if source == 'digits' else tf.io.read_file(inputs)), label

        def train_fn(inputs, label, key):
            image, label = read(inputs, label)
            return train_transform(image, key, cfg, policy, decoded), label

        def eval_fn(inputs, label):
            image, label = read(inputs, label)
            return eval_transform(image, cfg, decoded), label

        # Traced once per Dataset, not once per epoch's pipeline (RandAugment's graph is large).
        label_spec = tf.TensorSpec([], tf.int32)
        self._train_fn = tf.function(
            train_fn, autograph=False, input_signature=[spec, label_spec, tf.TensorSpec([2], tf.int64)]
        )
        self._eval_fn = tf.function(eval_fn, autograph=False, input_signature=[spec, label_spec])

    def steps_per_epoch(self, batch_size: int, replicas: int = 1) -> int:
        """Full training batches per epoch (the last partial one is dropped, as timm's drop_last). With
        --aug-repeats, as timm's RepeatAugSampler over `replicas` data-parallel shards (sampler.py)."""
        if not 1 <= batch_size <= self.num_examples:
            raise UserError(
                f'batch size {batch_size} does not fit the {self.num_examples} training '
                f'images; pass a -b between 1 and {self.num_examples}'
            )
        if self._cfg.updates_per_epoch:  # --train-batches-per-epoch
            return self._cfg.updates_per_epoch
        if self._cfg.aug_repeats:
            return sampler.steps_per_epoch(self.num_examples, self._cfg.aug_repeats, replicas, batch_size)
        if self._cfg.epoch_repeats > 1:  # as timm's iterable readers: whole batches, wrapping into the next pass
            return math.ceil(math.ceil(self._cfg.epoch_repeats * self.num_examples) / batch_size)
        return self.num_examples // batch_size

    def train_batches(
        self,
        batch_size: int,
        epoch: int,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        replicas: int = 1,
    ) -> Iterator[dict]:
        """Augmented uint8 batches {'image', 'label'} of epoch `epoch`, from step `start_step` on.

        `batch_size` is global; this process gets rows [process_index * b, (process_index + 1) * b) of
        every global batch, b = batch_size / process_count. `replicas`: the data-parallel shards that
        --aug-repeats spreads an image's copies over (sampler.py).
        """
        steps = self.steps_per_epoch(batch_size, replicas)
        local = _local_batch_size(batch_size, process_index, process_count)
        if epoch < 0 or not 0 <= start_step <= steps:
            raise UserError(
                f'epoch {epoch}, step {start_step} is not in an epoch of {steps} steps; '
                'resume from a checkpoint made with this data and batch size'
            )
        rows = _rows(start_step, steps, batch_size, process_index, local)
        if self._cfg.aug_repeats:  # copy c of example i is augmented with key i + c N (c = 0 as without)
            order = epoch_order(self._cfg.seed, epoch, self.num_examples)
            index, copy = sampler.epoch_plan(order, self._cfg.aug_repeats, replicas, batch_size)
        else:  # --epoch-repeats / --train-batches-per-epoch: pass p over the data augments with key i + p N
            index = epoch_order(self._cfg.seed, epoch, self.num_examples, steps * batch_size)
            copy = np.arange(len(index)) // self.num_examples
        plan = np.stack([index, index + copy * self.num_examples], 1)[rows]
        epoch_key = tf.random.experimental.stateless_fold_in(tf.constant([self._cfg.seed, 0], tf.int64), epoch)

        def columns(plan):  # an unreadable example's slot takes the next readable one
            index, key = plan[:, 0], plan[:, 1]
            source = self._replacements(index)
            return (self._inputs[source], self._labels[source], key), source, source != index

        def load(inputs, label, i):
            image, label = self._train_fn(inputs, label, tf.random.experimental.stateless_fold_in(epoch_key, i))
            return {'image': image, 'label': label}

        return self._batches(plan, local, columns, load, epoch)

    def eval_batches(self, batch_size: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
        """All examples in order, centre-cropped: uint8 {'image', 'label', 'mask'}.

        The last global batch is padded to `batch_size` with rows whose mask is False, so every batch
        has one shape; so are the rows of unreadable images. Rows are split between processes as in
        `train_batches`.
        """
        local = _local_batch_size(batch_size, process_index, process_count)
        rows = _rows(0, -(-self.num_examples // batch_size), batch_size, process_index, local)
        in_range = rows < self.num_examples
        index = np.where(in_range, rows, 0)
        size = (self._cfg.img_size, self._cfg.img_size, self._cfg.channels)

        def columns(index_and_range):
            index, in_range = index_and_range[:, 0], index_and_range[:, 1].astype(bool)
            valid = in_range & ~self.unreadable[index]
            return (self._inputs[index], self._labels[index], valid), index, in_range & ~valid

        def load(inputs, label, valid):
            image, label = tf.cond(
                valid, lambda: self._eval_fn(inputs, label), lambda: (tf.zeros(size, tf.uint8), label)
            )
            return {'image': image, 'label': label, 'mask': valid}

        return self._batches(np.stack([index, in_range], 1), local, columns, load, 'eval')

    def skipped_images(self, epoch) -> int:
        """Slots of training epoch `epoch` (or rows of the evaluations: 'eval') given up so far."""
        return self.skipped.get(epoch, 0)

    def _replacements(self, index: np.ndarray) -> np.ndarray:
        """`index` with each unreadable example replaced by the next readable one (cyclically)."""
        source = np.array(index)
        for position in np.flatnonzero(self.unreadable[source]):
            candidate = source[position]
            for _ in range(self.num_examples):
                candidate = (candidate + 1) % self.num_examples
                if not self.unreadable[candidate]:
                    break
            else:
                raise UserError('no image of this split can be read; check the data folder')
            source[position] = candidate
        return source

    def _decoded(self, pixels):
        """A digit: the 8x8 image, upscaled (bilinear) to img_size, grey -> RGB, uint8."""
        gray = tf.saturate_cast(tf.round(pixels * (255.0 / _DIGITS_MAX)), tf.uint8)[..., None]
        return tf.tile(resize(gray, (self._cfg.img_size, self._cfg.img_size)), (1, 1, 3))

    def _pipeline(self, columns, load, local_batch_size):
        workers = self._cfg.num_workers
        parallel = tf.data.AUTOTUNE if workers is None else (workers or None)
        ds = tf.data.Dataset.from_tensor_slices(columns)
        ds = ds.map(load, num_parallel_calls=parallel, deterministic=True)
        ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE if workers is None else 2)
        options = tf.data.Options()
        options.deterministic = True
        options.threading.max_intra_op_parallelism = 1  # one thread per image: the most images per core
        if workers:  # -j N: at most N threads for this pipeline
            options.threading.private_threadpool_size = workers
        return ds.with_options(options).as_numpy_iterator()

    def _batches(self, plan, local_batch_size, columns, load, epoch):
        """The batches of `plan` (one row per slot). A batch that fails to load is retried with its
        unreadable images found and skipped, from that batch on (nothing before it is redone)."""
        done, skipped = 0, 0
        total = len(plan) // local_batch_size
        while done < total:
            inputs, source, replaced = columns(plan[done * local_batch_size :])
            rows = slice(0, local_batch_size)  # those of the batch being loaded
            try:
                for batch in self._pipeline(inputs, load, local_batch_size):
                    skipped += int(replaced[rows].sum())
                    rows = slice(rows.stop, rows.stop + local_batch_size)
                    done += 1
                    yield batch
            except tf.errors.OpError as err:
                if not self._find_unreadable([column[rows] for column in inputs], source[rows], load, epoch):
                    raise UserError(
                        f'reading a batch of images failed ({error_reason(err)}); check the data folder and the disk'
                    ) from None
        self.skipped[epoch] = self.skipped.get(epoch, 0) + skipped
        if skipped:
            what = (
                'masked out of the evaluation'
                if epoch == 'eval'
                else f'replaced by the next image in their slots in epoch {epoch}'
            )
            log.warning(
                '%d unreadable images %s (%d files unreadable so far)', skipped, what, int(self.unreadable.sum())
            )

    def _find_unreadable(self, columns, source, load, epoch) -> bool:
        """Loads each example of one batch alone; marks those that fail. Whether any did."""
        found = 0
        for row, index in enumerate(source):
            try:
                load(*[column[row] for column in columns])
            except tf.errors.OpError as problem:
                if self.unreadable[index]:
                    continue
                self.unreadable[index] = True
                found += 1
                log.warning(
                    'cannot read image %s (%s); skipping it: %s',
                    self.records.describe(index) if self.records is not None else printable(self.paths[index]),
                    error_reason(problem),
                    'its row is masked out' if epoch == 'eval' else 'its slots take the next image',
                )
        if self.unreadable.all():
            raise UserError('no image of this split can be read; check the data folder')
        return found > 0


def channel_stats(values, channels: int) -> tuple:
    """Normalisation mean or std for `channels`-channel images, as timm's loader adapts them (adapt_to_chs):
    as given when they match, else their average for every channel (3 ImageNet values for grey images)."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (float(np.mean(values)),) * channels


def _rows(first_step, steps, batch_size, process_index, local_batch_size) -> np.ndarray:
    """Positions in the epoch of this process's rows of global batches first_step..steps-1."""
    starts = np.arange(first_step, steps)[:, None] * batch_size + process_index * local_batch_size
    return (starts + np.arange(local_batch_size)).reshape(-1)


def epoch_order(seed: int, epoch: int, num_examples: int, length: int | None = None) -> np.ndarray:
    """The order in which epoch `epoch` visits the examples: a permutation seeded by (seed, epoch), then for
    an epoch of `length` > num_examples slots (--epoch-repeats, --train-batches-per-epoch) pass k >= 1's own
    permutation seeded by (seed, epoch, k), cut at `length`."""
    order = [np.random.default_rng([seed, epoch]).permutation(num_examples)]
    for k in range(1, -(-(length or 0) // num_examples)):
        order.append(np.random.default_rng([seed, epoch, k]).permutation(num_examples))
    return np.concatenate(order)[: length or num_examples]


def load_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, validation) for `cfg`. The folders are listed (from a cache when it is warm); no image is
    decoded here unless cfg.verify_images, which decodes each once, as training does."""
    _check_config(cfg)
    if tfds.dataset_name(cfg.dataset) is not None:
        names, train_records, val_records = tfds.load(cfg)
        if cfg.verify_images:
            log.warning('--verify-images checks image folders only; TFDS records are skipped in place when bad')
        train = Dataset(cfg, 'tfds', names, None, records=train_records)
        val = Dataset(cfg, 'tfds', names, None, records=val_records)
    elif cfg.data_dir is None:
        train, val = _load_digits(cfg)
    else:
        source, names, (train_paths, train_labels), (val_paths, val_labels) = load_folders(cfg)
        if cfg.verify_images:
            verify_images(train_paths + val_paths, cfg.num_workers)
        train = Dataset(cfg, source, names, train_labels, paths=train_paths)
        val = Dataset(cfg, source, names, val_labels, paths=val_paths)
    if cfg.num_classes is not None and cfg.num_classes != train.num_classes:
        where = cfg.dataset or cfg.data_dir or 'the built-in digits data (no DATA given)'
        raise UserError(
            f'--num-classes is {cfg.num_classes} but {train.num_classes} classes were found '
            f'in {where}; pass --num-classes {train.num_classes} or fix the class folders'
        )
    return train, val


def _check_config(cfg: DataConfig) -> None:
    checks = [
        (cfg.img_size >= 1, f'--img-size must be positive, got {cfg.img_size}'),
        (
            0 < cfg.val_split_fraction < 1,
            f'the validation fraction must be between 0 and 1, got {cfg.val_split_fraction}',
        ),
        (0 < cfg.scale[0] <= cfg.scale[1] <= 1, f'--scale must be 0 < min <= max <= 1, got {cfg.scale}'),
        (0 < cfg.ratio[0] <= cfg.ratio[1], f'--ratio must be 0 < min <= max, got {cfg.ratio}'),
        (0 <= cfg.hflip <= 1, f'--hflip must be a probability in [0, 1], got {cfg.hflip}'),
        (0 < cfg.crop_pct <= 1, f'--crop-pct must be in (0, 1], got {cfg.crop_pct}'),
        (cfg.num_workers is None or cfg.num_workers >= 0, f'--workers must be >= 0, got {cfg.num_workers}'),
        (cfg.seed >= 0, f'--seed must be >= 0, got {cfg.seed}'),
        (cfg.num_classes is None or cfg.num_classes >= 1, f'--num-classes must be positive, got {cfg.num_classes}'),
        (0 <= cfg.reprob <= 1, f'--reprob must be a probability in [0, 1], got {cfg.reprob}'),
        (cfg.remode.lower() in ERASING_MODES, f'--remode must be one of {"/".join(ERASING_MODES)}, got {cfg.remode!r}'),
        (cfg.recount >= 1, f'--recount must be >= 1, got {cfg.recount}'),
        (
            cfg.interpolation in KERNELS,
            f'--interpolation must be one of {"/".join(KERNELS)}, got {cfg.interpolation!r}',
        ),
        (
            len(cfg.mean) == 3 and len(cfg.std) == 3 and all(s > 0 for s in cfg.std),
            f'--mean and --std need 3 values each, std > 0; got {cfg.mean} and {cfg.std}',
        ),
    ]
    checks += color.config_checks(cfg, KERNELS)  # timm's default-augmentation options
    for ok, message in checks:
        if not ok:
            raise UserError(message + '; fix the option')
    if cfg.auto_augment:
        rand_augment.parse(cfg.auto_augment)
        if cfg.channels != 3:
            raise UserError('--aa with --input-img-mode L is not built; leave one of them out')
    if cfg.channels not in (1, 3):
        raise UserError(f'images of {cfg.channels} channels are not built; use --input-img-mode RGB or L')


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    if batch_size < 1:
        raise UserError(f'batch size must be positive, got {batch_size}; pass -b N with N >= 1')
    if batch_size % process_count:
        raise UserError(
            f'batch size {batch_size} does not divide among {process_count} processes; '
            f'pass a -b that is a multiple of {process_count}'
        )
    if not 0 <= process_index < process_count:
        raise UserError(f'process index {process_index} is not in [0, {process_count})')
    return batch_size // process_count


def _load_digits(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    digits = datasets.load_digits()
    pixels, labels = digits.images.astype(np.float32), digits.target.astype(np.int32)
    names = [str(c) for c in range(10)]
    train, val = stratified_split(labels, cfg.val_split_fraction, names, 'the digits data')
    return (
        Dataset(cfg, 'digits', names, labels[train], pixels=pixels[train]),
        Dataset(cfg, 'digits', names, labels[val], pixels=pixels[val]),
    )


def data_config(config) -> DataConfig:
    """The DataConfig of a training `config.Config` (its data and augmentation flags, its data config)."""
    return DataConfig(
        data_dir=config.data,
        train_split=config.train_split,
        val_split=config.val_split,
        val_split_fraction=config.val_split_fraction,
        img_size=config.img_size,
        num_classes=config.num_classes,
        seed=config.seed,
        scale=config.scale,
        ratio=config.ratio,
        hflip=config.hflip,
        crop_pct=config.crop_pct,
        num_workers=config.workers,
        auto_augment=config.aa,
        reprob=config.reprob,
        remode=config.remode,
        recount=config.recount,
        mean=tuple(config.mean),
        std=tuple(config.std),
        interpolation=config.interpolation,
        verify_images=config.verify_images,
        dataset=config.dataset,
        input_key=config.input_key,
        target_key=config.target_key,
        download=config.dataset_download,
        in_chans=config.in_chans or 3,
        vflip=config.vflip,
        color_jitter=tuple(np.atleast_1d(config.color_jitter).tolist()),  # timm's YAML configs give one number
        color_jitter_prob=config.color_jitter_prob,
        grayscale_prob=config.grayscale_prob or 0.0,
        gaussian_blur_prob=config.gaussian_blur_prob or 0.0,
        train_interpolation=config.train_interpolation,
        no_aug=config.no_aug,
        aug_repeats=config.aug_repeats,
        class_map=config.class_map,
        channels=data_flags.input_channels(config),
        epoch_repeats=config.epoch_repeats,
        train_crop_mode=config.train_crop_mode or 'rrc',
        updates_per_epoch=(config.train_batches_per_epoch or 0) // config.grad_accum_steps or None,
    )
