"""Model registry: `create_model(name, num_classes, dtype, param_dtype)` for the timm-compatible Flax models.

Every model takes `dtype` (compute: convolutions and matmuls; normalisation statistics stay float32)
and `param_dtype` (storage of the params; BatchNorm running statistics stay float32), and returns
float32 logits whatever it computes in.
"""

from __future__ import annotations

import numbers

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.errors import UserError
from jax_ema.models.efficientnet import EFFICIENTNETS, efficientnet
from jax_ema.models.mobilenetv3 import MOBILENETV3S, mobilenetv3
from jax_ema.models.resnet import RESNET_LAYOUTS, resnet
from jax_ema.pretrained_cfgs import split_model_name

_BUILDERS = {**{n: efficientnet for n in EFFICIENTNETS}, **{n: mobilenetv3 for n in MOBILENETV3S}}
MODEL_NAMES = tuple(RESNET_LAYOUTS) + tuple(_BUILDERS)


def create_model(name: str, num_classes: int, dtype=jnp.float32, param_dtype=jnp.float32, **kwargs) -> nn.Module:
    """Flax module whose variables map one-to-one onto timm.create_model(name, num_classes=...).state_dict().

    `name` may carry a pretrained tag, as timm's ('resnet50.a1_in1k'); the tag does not change the module.

    kwargs go to the model: timm's `drop_rate` (--drop, dropout before the classifier) and `drop_path_rate`
    (--drop-path, stochastic depth) for the EfficientNet / MobileNetV3 family.
    """
    full_name, name = name, split_model_name(name)[0]
    if name not in MODEL_NAMES:
        raise UserError(f'unknown model {full_name!r}; known models: {", ".join(MODEL_NAMES)}')
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f'num_classes must be a positive integer, got {num_classes!r}')
    for key in ('drop_rate', 'drop_path_rate'):
        rate = kwargs.get(key, 0.0)
        if not (isinstance(rate, numbers.Real) and 0.0 <= rate < 1.0):
            raise UserError(f'{key} must be a number in [0, 1), got {rate!r}')
    if name in RESNET_LAYOUTS:
        drops = [k for k in ('drop_rate', 'drop_path_rate') if kwargs.pop(k, 0.0)]
        if drops:
            raise UserError(
                f'{name} does not implement {" / ".join(drops)} (--drop / --drop-path); '
                f'leave them at 0 or pick one of {", ".join(_BUILDERS)}'
            )
        return resnet(name, int(num_classes), dtype, param_dtype, **kwargs)
    return _BUILDERS[name](name, int(num_classes), dtype=dtype, param_dtype=param_dtype, **kwargs)


CLASSIFIER_NAMES = ('fc', 'classifier')  # the Linear head's module: ResNet's, the EfficientNet family's


def init_head(variables: dict, scale: float | None = None, bias: float | None = None) -> dict:
    """timm train.py's --head-init-scale (the classifier's weight and bias multiplied by it) and then
    --head-init-bias (its bias set to the value), on a model's variables."""
    if scale is None and bias is None:
        return variables
    params = dict(variables['params'])
    name = next((n for n in CLASSIFIER_NAMES if n in params), None)
    if name is None:
        raise UserError('this model has no classifier to scale; leave out --head-init-scale / --head-init-bias')
    head = dict(params[name])
    if scale is not None:
        head = {k: v * jnp.asarray(scale, v.dtype) for k, v in head.items()}
    if bias is not None:
        head['bias'] = jnp.full_like(head['bias'], bias)
    params[name] = head
    return {**variables, 'params': params}


def drop_kwargs(drop: float = 0.0, drop_path: float | None = None) -> dict:
    """timm's --drop / --drop-path as `create_model` kwargs (left out when 0, as timm leaves out None)."""
    rates = {'drop_rate': drop, 'drop_path_rate': drop_path}
    return {k: v for k, v in rates.items() if v}
