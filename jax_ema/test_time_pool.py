"""timm's test-time pooling (validate.py --test-pool: timm.layers.apply_test_time_pool / TestTimePoolHead), for
evaluation only.

The rule, timm's: where the evaluated size is larger, in height and in width, than the model's pretrained default
`input_size` (the train size, not test_input_size), the classifier is applied as a 1x1 convolution to the feature
map after a stride-1 average pool of the pretrained `pool_size` window (the map the default size gives), and the
class scores are pooled by timm's adaptive avg-max pool (the mean of the spatial average and the spatial maximum);
the model's own global pool (--gp) is not used. validate.py then crops with crop_pct 1.0. The model's modules are
untouched: `pooled_apply` reads the feature map from a normal forward pass (flax's captured intermediates) and
adds the pooled head; the training path never sees it.

Models: the ResNets and the EfficientNet family (whose features end in conv_head + bn2). timm's head cannot take
MobileNetV3's (its conv_head follows the global pool) nor a --gp catavgmax classifier (twice the features): timm's
TestTimePoolHead fails on them, here a UserError says so.
"""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp

from jax_ema.data_config import model_pretrained_cfg
from jax_ema.errors import UserError
from jax_ema.models.blocks import ACTIVATIONS
from jax_ema.models.efficientnet import EfficientNet
from jax_ema.models.resnet import ResNet

log = logging.getLogger('jax_ema.validate')

FEATURE_STRIDE = 32  # every model here: timm's pool_size = ceil(input_size / 32) (parity-tested for each row)


def pool_size(model_name: str, input_size) -> tuple | None:
    """(h, w) of timm's test-time avg pool where apply_test_time_pool applies it at `input_size` (C, H, W), with
    timm's log line; None where it does not (a size not above the pretrained default in both dimensions, or a
    model without a pretrained config)."""
    row = model_pretrained_cfg(model_name)
    if row is None:
        return None
    default = tuple(row.input_size)
    if not (input_size[-1] > default[-1] and input_size[-2] > default[-2]):
        return None
    log.info(
        'Target input size %s > pretrained default %s, using test time pooling',
        str(tuple(input_size[-2:])),
        str(default[-2:]),
    )
    return tuple(math.ceil(s / FEATURE_STRIDE) for s in default[-2:])


def _features(model) -> tuple[str, str | None]:
    """(top-level module whose output is timm's forward_features, activation still to apply to it)."""
    if getattr(model, 'global_pool', 'avg') == 'catavgmax':
        raise UserError(
            "--test-pool with --gp catavgmax: the classifier takes twice the features, which timm's "
            'TestTimePoolHead cannot apply as a 1x1 convolution (it fails too); leave out one of them'
        )
    if isinstance(model, ResNet):
        return f'layer4_{model.layers[-1] - 1}', None
    if isinstance(model, EfficientNet):
        return 'bn2', model.act  # timm's BatchNormAct2d: the norm, then the activation
    raise UserError(
        f"--test-pool: timm's TestTimePoolHead does not fit {type(model).__name__}'s head (its conv_head follows "
        'the global pool; timm fails on it too); leave out --test-pool for this model'
    )


def pooled_apply(model, pool: tuple):
    """An `apply_fn(variables, images, train=False)` giving TestTimePoolHead's logits: forward_features,
    avg_pool2d(pool, stride 1), the classifier as a 1x1 conv, then the mean of the spatial average and maximum."""
    name, act = _features(model)
    head = 'fc' if isinstance(model, ResNet) else 'classifier'

    def apply_fn(variables, images, train=False):
        del train  # evaluation only
        _, state = model.apply(
            variables,
            images,
            train=False,
            capture_intermediates=lambda module, method: method == '__call__' and module.scope.path == (name,),
            mutable=['intermediates'],
        )
        x = state['intermediates'][name]['__call__'][0]
        x = x if act is None else ACTIVATIONS[act](x)
        x = jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, *pool, 1), (1, 1, 1, 1), 'VALID') / (
            pool[0] * pool[1]
        )
        fc = variables['params'][head]
        x = jnp.einsum('bhwc,cn->bhwn', x, fc['kernel'].astype(x.dtype)) + fc['bias'].astype(x.dtype)
        x = 0.5 * (jnp.mean(x, axis=(1, 2)) + jnp.max(x, axis=(1, 2)))  # timm's adaptive_avgmax_pool2d(x, 1)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))

    return apply_fn
