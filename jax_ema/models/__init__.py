"""Model registry: `create_model(name, num_classes, dtype, param_dtype)` for the timm-compatible Flax models.

Every model takes `dtype` (compute: convolutions and matmuls; normalisation statistics stay float32)
and `param_dtype` (storage of the params; BatchNorm running statistics stay float32), and returns
float32 logits whatever it computes in.
"""

import numbers

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.errors import UserError
from jax_ema.models.resnet import RESNET_LAYOUTS, resnet

MODEL_NAMES = tuple(RESNET_LAYOUTS)


def create_model(name: str, num_classes: int, dtype=jnp.float32, param_dtype=jnp.float32, **kwargs) -> nn.Module:
    """Flax module whose variables map one-to-one onto timm.create_model(name, num_classes=...).state_dict()."""
    if name not in MODEL_NAMES:
        raise UserError(f'unknown model {name!r}; known models: {", ".join(MODEL_NAMES)}')
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f'num_classes must be a positive integer, got {num_classes!r}')
    return resnet(name, int(num_classes), dtype, param_dtype, **kwargs)
