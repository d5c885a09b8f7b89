"""Model parameters: the model, its starting weights, the data config (image size, interpolation, mean/std,
crop_pct: None takes the model's, as timm's resolve_data_config) and the batch."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import flag, parse_kwargs, positive
from jax_ema.models import FLAGS
from jax_ema.models.layers import pool_type

# create_model arguments that have their own flag (timm would fail on them twice: TypeError): the model
# options' flags (models.FLAGS) and these.
FLAG_MODEL_KWARGS = dict(
    FLAGS,
    num_classes='--num-classes',
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
    gp: str | None = flag(
        'model',
        None,
        "global pool: avg, max, avgmax or catavgmax (timm's SelectAdaptivePool2d; catavgmax doubles the "
        "classifier's input; default: the model's, avg)",
        metavar='POOL',
    )
    in_chans: int | None = flag(
        'model',
        None,
        'image input channels: 3, or 1 for greyscale (--pretrained: the RGB first conv summed, as timm) (default: 3)',
        metavar='N',
    )
    bn_eps: float | None = flag(
        'model', None, "BatchNorm epsilon override (EfficientNet / MobileNetV3 as in timm; default: the model's)"
    )
    bn_momentum: float | None = flag(
        'model',
        None,
        "BatchNorm momentum override, torch's meaning: running = (1 - m) running + m batch "
        "(EfficientNet / MobileNetV3 as in timm; default: the model's, 0.1)",
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
        'model',
        False,
        "recompute each block's activations in the backward pass instead of storing them (timm's "
        'set_grad_checkpointing): less memory, more compute, the same results',
    )


def check(c) -> None:
    positive(c, 'batch_size', 'validation_batch_size', 'img_size', 'num_classes', 'grad_accum_steps', 'bn_eps')
    if c.bn_momentum is not None and not 0.0 <= c.bn_momentum <= 1.0:
        raise UserError(f'--bn-momentum must be in [0, 1] (torch meaning, timm uses 0.1), got {c.bn_momentum}')
    if c.in_chans not in (None, 1, 3):
        raise UserError(
            f'--in-chans {c.in_chans}: the images are decoded as RGB (3) or, as timm does for 1, greyscale; '
            'give --in-chans 1 or 3'
        )
    if c.in_chans == 1 and (len(set(c.mean)) > 1 or len(set(c.std)) > 1):
        raise UserError(
            f'--in-chans 1 needs one --mean and one --std value (got {list(c.mean)} and {list(c.std)}, per RGB '
            'channel); e.g. --mean 0.5 --std 0.5 (timm fails without them too)'
        )
    if c.gp is not None:
        pool_type(c.gp)
    extra_model_kwargs(c)


def extra_model_kwargs(c) -> dict:
    """--model-kwargs as a dict; a key that has its own flag is refused (timm fails on it too)."""
    kwargs = parse_kwargs(c.model_kwargs, '--model-kwargs')
    for key in kwargs:
        if key in FLAG_MODEL_KWARGS:
            raise UserError(f'--model-kwargs {key}=... is set by {FLAG_MODEL_KWARGS[key]}; use that flag instead')
    return kwargs
