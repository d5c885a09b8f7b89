"""Layers with PyTorch semantics: BatchNorm2d, symmetric-padded conv, -inf padded max pool."""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jax_ema.errors import UserError

# timm ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu') -> std = sqrt(2 / (out * kh * kw)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d over the last (channel) axis.

    params 'scale'/'bias' (torch weight/bias); batch_stats 'mean'/'var' (torch running_mean/running_var, var
    UNBIASED as torch stores it). Train mode normalises with the biased batch variance and updates
    running = (1 - momentum) * running + momentum * batch_stat with the unbiased batch variance.
    As torch autocast: statistics and the normalisation are computed in at least float32 whatever the
    input dtype, and only the output is cast to `dtype`. 'scale'/'bias' are stored in `param_dtype`;
    the running statistics always stay float32 (a bf16 running mean would stall like a bf16 EMA).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train: bool):
        c = x.shape[-1]
        scale = self.param('scale', cast_init(self.scale_init), (c,), self.param_dtype)
        bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
        stat_dtype = jnp.promote_types(jnp.promote_types(x.dtype, self.dtype), jnp.float32)
        if train:
            n = math.prod(x.shape[:-1])
            if n < 2:
                raise UserError(
                    f'BatchNorm in train mode needs more than 1 value per channel, got input shape '
                    f'{tuple(x.shape)}; use a larger batch or image size'
                )
            axes = tuple(range(x.ndim - 1))
            xs = x.astype(stat_dtype)
            mean = xs.mean(axes)
            var = jnp.square(xs - mean).mean(axes)  # biased, used to normalise
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean.astype(ra_mean.value.dtype)
                unbiased = var * (n / (n - 1))
                ra_var.value = (1 - m) * ra_var.value + m * unbiased.astype(ra_var.value.dtype)
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale.astype(stat_dtype) * lax.rsqrt(var.astype(stat_dtype) + self.epsilon)
        y = (x.astype(stat_dtype) - mean.astype(stat_dtype)) * mul + bias.astype(stat_dtype)
        return y.astype(self.dtype)


def cast_init(init: Callable) -> Callable:
    """`init` drawn in float32, then rounded to the requested dtype: a bfloat16 model starts from the
    float32 model's weights, rounded, as timm's `model.to(dtype)` does."""

    def cast(key, shape, dtype=jnp.float32):
        return init(key, shape, jnp.promote_types(dtype, jnp.float32)).astype(dtype)

    return cast


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    *,
    dtype: Any,
    name: str,
    use_bias: bool = False,
    groups: int = 1,
    param_dtype: Any = jnp.float32,
) -> nn.Conv:
    """torch.nn.Conv2d equivalent: symmetric padding (default kernel // 2), params in param_dtype,
    compute in dtype."""
    p = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=cast_init(conv_kernel_init),
        bias_init=cast_init(nn.initializers.zeros),
        name=name,
    )


def max_pool(x, kernel: int, stride: int, padding: int):
    """torch.nn.MaxPool2d (NHWC): symmetric padding with -inf, floor mode."""
    p = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=p)  # differentiable, -inf pad
