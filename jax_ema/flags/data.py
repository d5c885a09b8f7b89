"""Dataset parameters."""

from __future__ import annotations

import dataclasses

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
