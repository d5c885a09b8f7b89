"""Model parameters: the model, its starting weights, the data config (image size, interpolation, mean/std,
crop_pct: None takes the model's, as timm's resolve_data_config) and the batch."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import flag, parse_kwargs, positive

# create_model arguments that have their own flag (timm would fail on them twice: TypeError).
FLAG_MODEL_KWARGS = dict(
    num_classes='--num-classes',
    drop_rate='--drop',
    drop_path_rate='--drop-path',
    drop_block_rate='--drop-block',
    global_pool='--gp',
    bn_momentum='--bn-momentum',
    bn_eps='--bn-eps',
    in_chans='--in-chans',
    pretrained='--pretrained',
    dtype='--amp / --model-dtype',
    param_dtype='--model-dtype',
)


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
    # timmrest: timm's create_model extras
    model_kwargs: tuple = flag(
        'model',
        (),
        "more create_model arguments (timm's ParseKwargs): fields of the Flax model; unknown ones are refused",
        nargs='*',
        metavar='KEY=VALUE',
    )
    head_init_scale: float | None = flag('model', None, "multiply the classifier's initial weight and bias by this")
    head_init_bias: float | None = flag('model', None, "set the classifier's initial bias to this value")
    grad_checkpointing: bool = flag(
        'model', False, 'accepted for timm; no effect: XLA plans activation memory itself (results are the same)'
    )


def check(c) -> None:
    positive(c, 'batch_size', 'validation_batch_size', 'img_size', 'num_classes', 'grad_accum_steps')
    model_kwargs(c)


def model_kwargs(c) -> dict:
    """--model-kwargs as a dict; a key that has its own flag is refused (timm fails on it too)."""
    kwargs = parse_kwargs(c.model_kwargs, '--model-kwargs')
    for key in kwargs:
        if key in FLAG_MODEL_KWARGS:
            raise UserError(f'--model-kwargs {key}=... is set by {FLAG_MODEL_KWARGS[key]}; use that flag instead')
    return kwargs
