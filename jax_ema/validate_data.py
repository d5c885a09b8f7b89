"""validate's dataset: one split of DATA, built as the trainer builds its evaluation split but with the data
config validate resolved (the model's test size, the run's or the flags' crop, mean and std), and shared by the
checkpoints of a sweep that use one data config."""

from __future__ import annotations

import os
from types import SimpleNamespace

from jax_ema.device_input import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from jax_ema.errors import UserError
from jax_ema.flags.data import input_channels


def load_split(
    data,
    split: str,
    args: dict,
    img_size: int,
    crop_pct: float,
    workers: int | None,
    interpolation: str = 'bilinear',
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
    datasets: dict | None = None,
    crop: tuple = ('center', 0),
):
    """One split of DATA built by data.load_datasets with the run's split settings and this data config (`crop`:
    the eval crop mode and border pixels); `datasets` (a dict kept across calls): the splits already built, by their
    DataConfig, reused."""
    from jax_ema import data as data_lib  # the only module that imports tensorflow

    tfds = data_lib.tfds.dataset_name(args.get('dataset')) is not None
    is_train = split in data_lib.TRAIN_SPLIT_SYNONYMS and not tfds  # a TFDS split is read as it is named
    if data is None and not tfds and not is_train and split not in data_lib.EVAL_SPLIT_SYNONYMS:
        raise UserError(f'the built-in digits data has no split {split!r}; use --split validation or train')
    class_map = args.get('class_map') or ''  # the run's: absolute where the trainer found it from its directory
    places = (class_map, os.path.join(os.path.expanduser(data or ''), class_map))  # as given, else under DATA
    if class_map and not tfds and not any(os.path.isfile(p) for p in places):
        where = '' if os.path.isabs(class_map) else ' (looked for from here and under DATA)'
        raise UserError(
            f"the run's --class-map {class_map!r}{where} is not found; put the file back, or set class_map in the "
            "run's args.yaml to where it is now"
        )
    cfg = data_lib.DataConfig(
        data_dir=data,
        train_split=split if is_train else args.get('train_split', 'train'),
        val_split=args.get('val_split', 'validation') if is_train else split,
        val_split_fraction=args.get('val_split_fraction', 0.2),
        img_size=img_size,
        seed=args.get('seed', 42),
        crop_pct=crop_pct,
        num_workers=workers,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        dataset=args.get('dataset') or '',
        input_key=args.get('input_key') or 'image',
        target_key=args.get('target_key') or 'label',
        download=bool(args.get('dataset_download')),
        num_classes=args.get('num_classes') if tfds else None,
        class_map=class_map,  # the run's --class-map labels the folders as in training
        in_chans=args.get('in_chans') or 3,  # a run's --in-chans / --input-img-mode: its images decoded as it did
        channels=input_channels(
            SimpleNamespace(in_chans=args.get('in_chans'), input_img_mode=args.get('input_img_mode'))
        ),
        crop_mode=crop[0],
        crop_border_pixels=crop[1],
    )
    datasets = {} if datasets is None else datasets
    if cfg not in datasets:  # listing the folders, tracing the decode pipeline: once per data config
        datasets[cfg] = data_lib.load_datasets(cfg)
    return datasets[cfg][0 if is_train else 1]
