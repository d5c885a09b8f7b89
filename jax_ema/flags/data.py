"""Dataset parameters."""

from __future__ import annotations

import dataclasses
import os

from jax_ema.errors import UserError
from jax_ema.flags import flag, non_negative

TFDS_PREFIX = 'tfds/'


@dataclasses.dataclass(frozen=True)
class DataFlags:
    data: str | None = flag(
        'data',
        None,
        "dataset folder, or TFDS's data_dir with --dataset tfds/NAME (omit both to use the embedded digits)",
        ('data',),
        nargs='?',
    )
    dataset: str = flag(
        'data', '', 'dataset type and name: tfds/NAME for a prepared TFDS dataset (default: the folder DATA)'
    )
    train_split: str = flag(
        'data', 'train', 'training split (a folder name, or TFDS split syntax such as train[:90%%])'
    )
    val_split: str = flag('data', 'validation', 'validation split (a folder name, or TFDS split syntax)')
    val_split_fraction: float = flag('data', 0.2, 'held-out fraction when DATA has class folders but no split folders')
    input_key: str = flag('data', 'image', 'TFDS feature holding the image')
    target_key: str = flag('data', 'label', 'TFDS feature holding the class')
    dataset_download: bool = flag('data', False, 'let TFDS download and prepare the dataset if it is not prepared')
    workers: int | None = flag(
        'data',
        None,
        'threads decoding and augmenting images (default: sized to the host by tf.data)',
        ('-j', '--workers'),
    )
    verify_images: bool = flag(
        'data', False, 'decode every image once before training and stop at a bad one (default: skip it when read)'
    )
    # timmrest: timm's other dataset flags
    class_map: str = flag(
        'data',
        '',
        'class folder -> index from a file: .txt (one class name a line, index = line) or .pkl ({name: index}); '
        'folders not in it are left out',
        metavar='FILENAME',
    )
    input_img_mode: str | None = flag(
        'data', None, "image mode as PIL's convert: RGB, or L (grey, needs --in-chans 1) (default: from --in-chans)"
    )
    train_num_samples: int | None = flag(
        'data', None, "timm's, for iterable datasets; no effect here: the split's size is known", metavar='N'
    )
    val_num_samples: int | None = flag(
        'data', None, "timm's, for iterable datasets; no effect here: the split's size is known", metavar='N'
    )


def tfds_name(dataset: str | None) -> str | None:
    """NAME of `--dataset tfds/NAME`; None for a folder ('' or 'folder/...'); other kinds are refused."""
    if not dataset or dataset == 'folder' or dataset.startswith('folder/'):
        return None
    if dataset.startswith(TFDS_PREFIX) and len(dataset) > len(TFDS_PREFIX):
        return dataset[len(TFDS_PREFIX) :]
    raise UserError(
        f'--dataset {dataset!r} is not supported; use tfds/NAME for a TFDS dataset, or leave it out for a folder'
    )


def check(c) -> None:
    non_negative(c, 'workers')
    tfds_name(c.dataset)
    non_negative(c, 'train_num_samples', 'val_num_samples')
    input_channels(c)
    if c.class_map and tfds_name(c.dataset):
        raise UserError('--class-map applies to image folders; TFDS datasets keep their own labels here')


def class_map_path(class_map: str) -> str:
    """--class-map as an absolute path where it names a file from the working directory (timm looks there first),
    so that the run's args.yaml finds it from any directory (validate, a resume); else as given (under DATA)."""
    if class_map and not os.path.isabs(class_map) and os.path.isfile(class_map):
        return os.path.abspath(class_map)
    return class_map


IMG_MODES = {'RGB': 3, 'L': 1}  # PIL mode -> channels


def input_channels(c) -> int:
    """Channels of the decoded images: --input-img-mode's, else timm's default from --in-chans (3: RGB, else L)."""
    in_chans = getattr(c, 'in_chans', None) or 3  # --in-chans (model flags) where this build has it
    if c.input_img_mode is None:
        return 3 if in_chans == 3 else 1
    if c.input_img_mode not in IMG_MODES:
        raise UserError(f'--input-img-mode {c.input_img_mode!r} is not supported; use RGB or L')
    channels = IMG_MODES[c.input_img_mode]
    if channels != in_chans:
        raise UserError(
            f'--input-img-mode {c.input_img_mode} gives {channels}-channel images but the model takes {in_chans}; '
            f'pass --in-chans {channels}'
        )
    return channels
