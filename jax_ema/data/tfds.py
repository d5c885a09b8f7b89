"""TFDS datasets by name (`--dataset tfds/NAME`): one split of a prepared dataset, addressable by example index.

Every example of a split (TFDS's split syntax, slices such as `train[:90%]` included) is read by its index,
so the input pipeline treats it as it treats a folder: the epoch order is a permutation of (seed, epoch),
each process reads its rows of every global batch, and a resume starts at any batch exactly.
ArrayRecord files are read through TFDS's data source (`as_data_source`, raw records). TFRecord files have
no index: the first read scans each file's record headers (12 bytes each, no payload read) into a table
of offsets, cached beside the folder listings, and records are then read at their offset.

A record is parsed in the tf.data graph with the dataset's own feature specs: an `Image` feature keeps its
encoded bytes, decoded by the trainer's decoder as a file would be; any other image feature (an uint8
array already decoded) is taken as it is. The label is the `--target-key` feature (a ClassLabel gives the
class names and, without --num-classes, their number).
"""

import contextlib
import hashlib
import logging
import os
import struct
import tempfile

import numpy as np
import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.data.folder import cache_dir, printable
from jax_ema.errors import UserError
from jax_ema.flags.data import tfds_name as dataset_name  # noqa: F401  (jax_ema.data uses it)

_HEADER = 12  # a TFRecord: uint64 length, uint32 its CRC, the data, uint32 the data's CRC
log = logging.getLogger(__name__)


def _tfds():
    try:
        import tensorflow_datasets  # noqa: PLC0415  pylint: disable=g-import-not-at-top
    except ImportError:
        raise UserError('--dataset tfds/... needs tensorflow-datasets; pip install tensorflow-datasets') from None
    return tensorflow_datasets


def builder(name: str, data_dir: str | None, download: bool = False):
    """The prepared dataset's builder; prepares it with `download`, else says where TFDS looked and how to."""
    tfds = _tfds()
    where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets (TFDS default)'
    hint = f'prepare it with `tfds build {name.split(":")[0].split("/")[0]} --data_dir DIR` and pass --data-dir DIR'
    try:
        found = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001  DatasetNotFoundError, a bad version or config, a bad folder
        raise UserError(f'TFDS dataset {name!r} not found in {where} ({_first_line(err)}); {hint}') from None
    if not found.is_prepared():
        if not download:
            raise UserError(
                f'TFDS dataset {name!r} is not prepared in {found.data_dir}; {hint}, or add --dataset-download'
            )
        try:
            found.download_and_prepare()
        except Exception as err:  # noqa: BLE001  no network, a manual download, a full disk ...
            raise UserError(
                f'--dataset-download could not prepare {name!r} in {found.data_dir} ({_first_line(err)}); {hint}'
            ) from None
    return found


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


class Records:
    """One split's examples by index: `read(index)` in the tf.data graph gives (image, label int32)."""

    def __init__(self, found, split: str, input_key: str, target_key: str):
        tfds = _tfds()
        features = found.info.features
        for flag, key in (('--input-key', input_key), ('--target-key', target_key)):
            if key not in features:
                raise UserError(
                    f'{found.info.full_name} has no feature {key!r}; pass {flag} with one of {", ".join(features)}'
                )
        try:
            info = found.info.splits[split]
        except (KeyError, ValueError, AssertionError) as err:
            raise UserError(
                f'{found.info.full_name} has no split {split!r} ({_first_line(err)}); '
                f'its splits: {", ".join(found.info.splits)} (slices as train[:90%] allowed)'
            ) from None
        self.name = f'{found.info.full_name} {split}'
        self.split = split
        self.num_examples = int(info.num_examples)
        self.file_format = str(getattr(found.info.file_format, 'value', found.info.file_format))
        self.instructions = list(info.file_instructions)
        image, label = features[input_key], features[target_key]
        self.decoded = not isinstance(image, tfds.features.Image)
        if self.decoded and (image.dtype != np.uint8 or len(image.shape) not in (2, 3)):
            raise UserError(
                f'feature {input_key!r} of {found.info.full_name} is {image}, not an image; pass --input-key'
            )
        self.class_names = tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else None
        self._image, self._label, self._keys = image, label, (input_key, target_key)
        self.has_file_names = 'file_name' in features  # ImageNet's: what validate's --real-labels matches
        self._parser = tfds.core.example_parser.ExampleParser(features.get_serialized_info())
        if self.file_format == 'array_record':
            self._source = found.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        else:
            self._source = _TFRecordSource(self.instructions)

    def fetch(self, index) -> bytes:
        """The serialized record of example `index`."""
        return self._source[int(index)]

    def read(self, index):
        """(image: encoded bytes, or uint8 [H, W, 3] where decoded; label int32) of example `index`, in graph."""
        raw = tf.numpy_function(self.fetch, [index], tf.string, stateful=False)
        raw.set_shape([])
        parsed = self._parser.parse_example(raw)
        input_key, target_key = self._keys
        image = parsed[input_key]
        if self.decoded:
            image = self._image.decode_example(image)
            image = tf.reshape(image, tf.concat([tf.shape(image)[:2], [-1]], 0))
            image = tf.cond(tf.shape(image)[2] == 1, lambda: tf.tile(image, (1, 1, 3)), lambda: image[:, :, :3])
        label = tf.cast(self._label.decode_example(parsed[target_key]), tf.int32)
        return image, tf.reshape(label, [])

    def file_names(self) -> list[str]:
        """Each example's `file_name` feature, in index order (every record read once; `has_file_names`)."""
        names = []
        for index in range(self.num_examples):
            feature = tf.train.Example.FromString(self.fetch(index)).features.feature['file_name']
            names.append(feature.bytes_list.value[0].decode('utf-8', 'backslashreplace'))
        return names

    def describe(self, index: int) -> str:
        return f'record {index} of {self.name}'

    def entries(self) -> list[tuple[str, int]]:
        """For the data fingerprint: the split's files (name and size) and the slice of each it reads."""
        return [
            (f'{os.path.basename(i.filename)}[{i.skip}:{i.skip + i.take}]', _size(i.filename))
            for i in self.instructions
        ]


def _size(path: str) -> int:
    try:
        return int(tf.io.gfile.stat(path).length)
    except tf.errors.OpError:
        return -1


class _TFRecordSource:
    """Random access to the records a split's file instructions select, through a table of offsets per file."""

    def __init__(self, instructions):
        self._files, self._offsets, starts = [], [], [0]
        for instruction in instructions:
            offsets = record_offsets(instruction.filename)[instruction.skip : instruction.skip + instruction.take]
            self._files.append(instruction.filename)
            self._offsets.append(offsets)
            starts.append(starts[-1] + len(offsets))
        self._starts = np.array(starts)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> bytes:
        file = int(np.searchsorted(self._starts, index, side='right')) - 1
        offset = int(self._offsets[file][index - self._starts[file]])
        path = self._files[file]
        if '://' not in path:
            with open(path, 'rb') as f:
                length = struct.unpack('<Q', os.pread(f.fileno(), 8, offset))[0]
                data = os.pread(f.fileno(), length, offset + _HEADER)
        else:
            with tf.io.gfile.GFile(path, 'rb') as f:
                f.seek(offset)
                length = struct.unpack('<Q', f.read(8))[0]
                f.seek(offset + _HEADER)
                data = f.read(length)
        if len(data) != length:
            raise OSError(f'{path} ends inside record at offset {offset}')
        return data


def record_offsets(path: str) -> np.ndarray:
    """Where each record of a TFRecord file starts (cached, keyed by the file's path, size and mtime)."""
    stat = tf.io.gfile.stat(path)
    key = hashlib.sha256(f'tfrecord offsets 1\0{path}\0{stat.length}\0{stat.mtime_nsec}'.encode()).hexdigest()
    cached = os.path.join(cache_dir(), key + '.npy')
    try:
        table = np.load(cached, allow_pickle=False)
        if _plausible(table, stat.length):
            return table
    except (OSError, ValueError, EOFError):  # none yet, or damaged (a killed writer): scanned again below
        pass
    offsets, position = [], 0
    with tf.io.gfile.GFile(path, 'rb') as f:
        while position < stat.length:
            f.seek(position)
            header = f.read(8)
            if len(header) < 8:
                raise UserError(f'TFRecord file {printable(path)} is cut short; prepare the dataset again')
            offsets.append(position)
            position += _HEADER + struct.unpack('<Q', header)[0] + 4
    offsets = np.array(offsets, np.int64)
    _write_table(cached, offsets)
    return offsets


def _write_table(cached: str, offsets: np.ndarray) -> None:
    """Best effort, atomic: written under a temporary name of its own (processes scanning one file at once never
    write into one another's), then renamed into place."""
    tmp = None
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir(), suffix='.tmp', delete=False) as f:
            tmp = f.name
            np.save(f, offsets)
        os.replace(tmp, cached)
    except OSError as err:
        if tmp:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        log.debug('TFRecord offsets not cached (%s)', err)


def _plausible(table: np.ndarray, length: int) -> bool:
    """A table of offsets as the scan writes it: int64, from 0, increasing, each inside the file."""
    if table.dtype != np.int64 or table.ndim != 1:
        return False
    if table.size == 0:
        return length == 0
    return table[0] == 0 and table[-1] < length and bool((np.diff(table) > 0).all())


def load(cfg) -> tuple[tuple[str, ...], Records, Records]:
    """(class names, train records, validation records) of `cfg.dataset` = tfds/NAME in cfg.data_dir."""
    name = dataset_name(cfg.dataset)
    found = builder(name, cfg.data_dir, cfg.download)
    train = Records(found, cfg.train_split, cfg.input_key, cfg.target_key)
    val = Records(found, cfg.val_split, cfg.input_key, cfg.target_key)
    names = train.class_names
    if names is None:
        if cfg.num_classes is None:
            raise UserError(
                f'feature {cfg.target_key!r} of {name} is not a ClassLabel, so the number of classes is not '
                'known; pass --num-classes'
            )
        names = tuple(str(c) for c in range(cfg.num_classes))
    if not train.num_examples or not val.num_examples:
        empty = train if not train.num_examples else val
        raise UserError(f'split {empty.split!r} of {name} holds no examples; pass another split')
    log.info(
        'TFDS %s (%s): %d train examples (%s), %d validation (%s), %d classes',
        name,
        train.file_format,
        train.num_examples,
        train.split,
        val.num_examples,
        val.split,
        len(names),
    )
    return names, train, val
