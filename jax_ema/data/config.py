"""DataConfig: where the images are and how to augment them (names follow timm's train.py flags), built
from a training Config by `data_config`, and its checks (`check_config`, one line each)."""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_ema.data import color, eval_crops, rand_augment
from jax_ema.data.transforms import KERNELS
from jax_ema.device_input import ERASING_MODES, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from jax_ema.errors import UserError
from jax_ema.flags import data as data_flags


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
    crop_mode: str = 'center'  # validate --crop-mode (evaluation only): center, squash, border (eval_crops.py)
    crop_border_pixels: int = 0  # validate --crop-border-pixels: trimmed off each edge first (evaluation only)


def channel_stats(values, channels: int) -> tuple:
    """Normalisation mean or std for `channels`-channel images, as timm's loader adapts them (adapt_to_chs):
    as given when they match, else their average for every channel (3 ImageNet values for grey images)."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (float(np.mean(values)),) * channels


def check_config(cfg: DataConfig) -> None:
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
    checks += eval_crops.config_checks(cfg)  # --crop-mode, --crop-border-pixels
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
