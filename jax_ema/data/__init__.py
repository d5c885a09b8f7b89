"""Input pipeline: image folders, TFDS or the built-in digits, as uint8 NHWC batches (tf.data on the CPU).

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
jitter, greyscale, blur) rely on that; sampler.py (--aug-repeats) is numpy only;
config.py holds DataConfig, built from the training flags, and its checks.
"""

import logging
import math
import os
from collections.abc import Iterator

import numpy as np

from jax_ema import _compat
from jax_ema.device_input import DeviceInput
from jax_ema.errors import UserError

_compat.preload_triton()  # must precede `import tensorflow`, see _compat
_compat.quiet_tensorflow()
import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top

_compat.hide_gpus_from(tf)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_ema.data import eval_crops, rand_augment, sampler, tfds  # noqa: E402
from jax_ema.data.config import DataConfig, channel_stats, check_config, data_config  # noqa: E402,F401
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
        self.found = {}  # index -> (epoch, step) of the training batch that found it unreadable (for a resume)
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
            return eval_crops.eval_image(image, cfg, decoded), label  # eval_transform unless --crop-mode / border

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

        return self._batches(plan, local, columns, load, epoch, start_step)

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

    def restore_unreadable(self, found, epoch: int, step: int) -> None:
        """A resume at (epoch, step): the images an earlier session found unreadable before that batch are skipped
        again. A truncated JPEG fails only where its crop window reaches past the cut, so a fresh process would
        use it until its window failed again, and the batches would depend on where the run had been resumed."""
        for index, found_epoch, found_step in found:
            if (found_epoch, found_step) < (epoch, step) and index < self.num_examples:
                self.unreadable[index], self.found[index] = True, (found_epoch, found_step)

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

    def _batches(self, plan, local_batch_size, columns, load, epoch, first_step=0):
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
                batch = (epoch, first_step + done)
                if not self._find_unreadable([column[rows] for column in inputs], source[rows], load, batch):
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

    def _find_unreadable(self, columns, source, load, batch) -> bool:
        """Loads each example of one batch ((epoch or 'eval', step)) alone; marks those that fail. Whether any did."""
        epoch = batch[0]
        found = 0
        for row, index in enumerate(source):
            try:
                load(*[column[row] for column in columns])
            except tf.errors.OpError as problem:
                if self.unreadable[index]:
                    continue
                self.unreadable[index] = True
                if epoch != 'eval':
                    self.found[int(index)] = batch
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
    check_config(cfg)
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
