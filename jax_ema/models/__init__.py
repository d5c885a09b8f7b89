"""Model registry: `create_model(name, num_classes, dtype, param_dtype)` for the timm-compatible Flax models.

Every model takes `dtype` (compute: convolutions and matmuls; normalisation statistics stay float32)
and `param_dtype` (storage of the params; BatchNorm running statistics stay float32), and returns
float32 logits whatever it computes in.
"""

from __future__ import annotations

import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_ema.errors import UserError
from jax_ema.models.efficientnet import EFFICIENTNETS, efficientnet
from jax_ema.models.layers import pool_type
from jax_ema.models.mobilenetv3 import MOBILENETV3S, mobilenetv3
from jax_ema.models.resnet import RESNET_LAYOUTS, resnet
from jax_ema.pretrained_cfgs import split_model_name

_BUILDERS = {**{n: efficientnet for n in EFFICIENTNETS}, **{n: mobilenetv3 for n in MOBILENETV3S}}
MODEL_NAMES = tuple(RESNET_LAYOUTS) + tuple(_BUILDERS)


_RATES = ('drop_rate', 'drop_path_rate', 'drop_block_rate')
# Those that only act in training (timm's train.py sets them; evaluation and the converters need not know them).
_TRAIN_ONLY = (*_RATES, 'bn_momentum')
FLAGS = dict(
    drop_rate='--drop',
    drop_path_rate='--drop-path',
    drop_block_rate='--drop-block',
    global_pool='--gp',
    bn_eps='--bn-eps',
    bn_momentum='--bn-momentum',
    in_chans='--in-chans',
    grad_checkpointing='--grad-checkpointing',
)


def create_model(name: str, num_classes: int, dtype=jnp.float32, param_dtype=jnp.float32, **kwargs) -> nn.Module:
    """Flax module whose variables map one-to-one onto timm.create_model(name, num_classes=..., **kwargs).state_dict().

    `name` may carry a pretrained tag, as timm's ('resnet50.a1_in1k'); the tag does not change the module.

    kwargs are timm's create_model kwargs that train.py passes (None: the model's default, as timm drops them):
    drop_rate (--drop, dropout before the classifier), drop_path_rate (--drop-path, stochastic depth),
    drop_block_rate (--drop-block, ResNets), global_pool (--gp: avg, max, avgmax, catavgmax), bn_eps and
    bn_momentum (--bn-eps, --bn-momentum, torch's momentum; EfficientNet / MobileNetV3 as in timm, whose ResNet
    takes neither), in_chans (--in-chans, the input channels) and grad_checkpointing (--grad-checkpointing,
    timm's set_grad_checkpointing: each block's activations recomputed in the backward pass, the results the same).
    """
    full_name, name = name, split_model_name(name)[0]
    if name not in MODEL_NAMES:
        raise UserError(f'unknown model {full_name!r}; known models: {", ".join(MODEL_NAMES)}')
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise UserError(f'num_classes must be a positive integer, got {num_classes!r}')
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # kwargs beyond FLAGS (--model-kwargs) go to the module's fields; one it does not have raises TypeError
    for key in _RATES:
        rate = kwargs.get(key, 0.0)
        if not (isinstance(rate, numbers.Real) and 0.0 <= rate < 1.0):
            raise UserError(f'{key} ({FLAGS[key]}) must be a number in [0, 1), got {rate!r}')
    if 'global_pool' in kwargs:
        kwargs['global_pool'] = pool_type(kwargs['global_pool'])
    in_chans = kwargs.get('in_chans', 3)
    if not isinstance(in_chans, numbers.Integral) or isinstance(in_chans, bool) or in_chans < 1:
        raise UserError(f'in_chans (--in-chans) must be a positive integer, got {in_chans!r}')
    if not kwargs.get('bn_eps', 1.0) > 0:
        raise UserError(f'bn_eps (--bn-eps) must be > 0, got {kwargs["bn_eps"]}')
    if not 0.0 <= kwargs.get('bn_momentum', 0.0) <= 1.0:
        raise UserError(f'bn_momentum (--bn-momentum, torch semantics) must be in [0, 1], got {kwargs["bn_momentum"]}')
    refused = ('bn_eps', 'bn_momentum') if name in RESNET_LAYOUTS else ('drop_block_rate',)
    refused = [FLAGS[k] for k in refused if k in kwargs and (k != 'drop_block_rate' or kwargs[k])]
    if refused:
        raise UserError(
            f"{name} does not take {' / '.join(refused)} (timm's create_model fails on it too); leave it unset "
            f'for {name}'
        )
    if name in RESNET_LAYOUTS:
        return resnet(name, int(num_classes), dtype, param_dtype, **kwargs)
    kwargs.pop('drop_block_rate', None)  # 0 here
    return _BUILDERS[name](name, int(num_classes), dtype=dtype, param_dtype=param_dtype, **kwargs)


def model_kwargs(config) -> dict:
    """timm train.py's create_model kwargs from a `config.Config` (None left out, as timm does): --drop,
    --drop-path, --drop-block, --gp, --bn-eps, --bn-momentum, --in-chans (--input-size takes 3 channels only),
    --grad-checkpointing (timm's model.set_grad_checkpointing) and the --model-kwargs extras."""
    kwargs = dict(
        drop_rate=config.drop or None,
        drop_path_rate=config.drop_path,
        drop_block_rate=config.drop_block,
        global_pool=config.gp,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
        in_chans=config.in_chans,
        grad_checkpointing=config.grad_checkpointing or None,
    )
    from jax_ema.flags.model import extra_model_kwargs

    return {**{k: v for k, v in kwargs.items() if v is not None}, **extra_model_kwargs(config)}  # + --model-kwargs


def arch_kwargs(kwargs: dict | None) -> dict:
    """What a checkpoint records of create_model `kwargs` and evaluation rebuilds: all but the training-only
    rates and --bn-momentum (--gp, --in-chans, --bn-eps, --grad-checkpointing, the --model-kwargs extras).
    Lists (a JSON round trip of a tuple) become tuples again."""
    return {k: _frozen(v) for k, v in (kwargs or {}).items() if k not in _TRAIN_ONLY and v is not None}


def _frozen(value):
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value


def same_model(recorded: dict | None, kwargs: dict | None) -> bool:
    """Whether a checkpoint's recorded model_kwargs and these create_model kwargs build the same variables and
    results (--grad-checkpointing changes neither: a run resumes with or without it)."""

    def key(kw):
        return {k: v for k, v in arch_kwargs(kw).items() if k != 'grad_checkpointing'}

    return key(recorded) == key(kwargs)


def describe_kwargs(kwargs: dict | None) -> str:
    """create_model kwargs as the flags that set them ('--gp max --in-chans 1 --model-kwargs act=relu';
    'no model options')."""
    kwargs = {k: _frozen(v) for k, v in (kwargs or {}).items()}
    words = [FLAGS[k] if k == 'grad_checkpointing' else f'{FLAGS[k]} {v}' for k, v in kwargs.items() if k in FLAGS]
    extras = [f'{k}={v!r}' for k, v in kwargs.items() if k not in FLAGS]
    return ' '.join(words + (['--model-kwargs', *extras] if extras else [])) or 'no model options'


def step_compiler_options(kwargs: dict | None) -> dict | None:
    """XLA options for the train step of a model built with `kwargs`. With grad_checkpointing on the CPU: keep
    the optimization barriers that jax.checkpoint puts around each block's recomputation. XLA:CPU drops them
    early (cse_barrier_expander) and its CSE then merges the recomputation back into the stored activations,
    undoing it; GPU and TPU keep them until after scheduling. The numbers are the same either way."""
    if (kwargs or {}).get('grad_checkpointing') and jax.default_backend() == 'cpu':
        return {'xla_disable_hlo_passes': 'cse_barrier_expander'}
    return None


def in_chans(kwargs: dict | None) -> int:
    """The input channels of the model built with create_model `kwargs`."""
    return int((kwargs or {}).get('in_chans') or 3)


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
