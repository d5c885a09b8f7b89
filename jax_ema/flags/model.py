"""Model parameters: the model, its starting weights, the data config (image size, interpolation, mean/std,
crop_pct: None takes the model's, as timm's resolve_data_config) and the batch."""

from __future__ import annotations

import dataclasses

from jax_ema.flags import flag, positive


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    model: str = flag('model', 'resnet50')
    num_classes: int | None = flag('model', None, 'default: the number of class folders')
    initial_checkpoint: str | None = flag(
        'model',
        None,
        'start from timm weights: .safetensors, or .pth/.pth.tar/.bin (loaded with weights_only=True)',
        metavar='PATH',
    )
    initial_checkpoint_ema: bool = flag('model', False, "take the file's state_dict_ema instead of its state_dict")
    pretrained: bool = flag(
        'model',
        False,
        "start from timm's pretrained weights of --model (NAME: its default "
        'tag, or NAME.TAG), fetched from the Hugging Face hub (HF_HUB_OFFLINE, HF_HOME, '
        'HF_HUB_CACHE apply)',
    )
    pretrained_path: str | None = flag(
        'model',
        None,
        'the pretrained weights from this file instead (.safetensors; .pth/.bin need torch); implies --pretrained',
        metavar='FILE',
    )
    img_size: int | None = flag('model', None, "default: the model's data config; 32 without DATA")
    input_size: tuple | None = flag(
        'model', None, '3 N N: the image size (wins over --img-size, as in timm)', nargs=3, type=int, metavar='N'
    )
    crop_pct: float | None = flag(
        'model',
        None,
        "center crop fraction of the validation images (default: the model's data config; 1.0 without DATA)",
    )
    interpolation: str | None = flag(
        'model',
        None,
        "resize filter: bilinear, bicubic, lanczos or box (default: the model's data config; bilinear without DATA)",
        metavar='NAME',
    )
    mean: tuple | None = flag(
        'model',
        None,
        "normalisation mean, 1 or 3 values (default: the model's data config; ImageNet's without DATA)",
        nargs='+',
        type=float,
        metavar='MEAN',
    )
    std: tuple | None = flag(
        'model',
        None,
        "normalisation std, 1 or 3 values (default: the model's data config; ImageNet's without DATA)",
        nargs='+',
        type=float,
        metavar='STD',
    )
    batch_size: int | None = flag('model', None, 'per device (timm: per GPU)', ('-b', '--batch-size'))
    validation_batch_size: int | None = flag('model', None, 'default: -b', ('-vb', '--validation-batch-size'))
    grad_accum_steps: int = flag('model', 1, 'micro-batches of -b per optimizer and EMA update')


def check(c) -> None:
    positive(c, 'batch_size', 'validation_batch_size', 'img_size', 'num_classes', 'grad_accum_steps')
