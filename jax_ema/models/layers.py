"""Layers with PyTorch / timm semantics: BatchNorm2d, symmetric-padded conv, -inf padded max pool, timm's
global pools (SelectAdaptivePool2d), drop path (stochastic depth) and DropBlock."""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jax_ema.errors import UserError

# timm ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu') -> std = sqrt(2 / (out * kh * kw)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


@functools.cache
def checkpointed(block: type) -> type:
    """`block` (a module called as block(x, train)) with its activations recomputed in the backward pass
    instead of stored: timm's set_grad_checkpointing, whose checkpoint_seq wraps each block. Its batch_stats
    updates and dropout draws are those of the plain block (`train` is static)."""
    return nn.remat(block, static_argnums=(2,))


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


def check_channels(x, in_chans: int) -> None:
    """The model's input has `in_chans` channels (timm's in_chans), else UserError."""
    if x.shape[-1] != in_chans:
        raise UserError(
            f'the model takes {in_chans} input channels (--in-chans), the images have {x.shape[-1]}; '
            'give --in-chans to match them'
        )


# timm's SelectAdaptivePool2d pool types (a 'fast' prefix is the same pool); catavgmax doubles the features.
POOL_TYPES = ('avg', 'max', 'avgmax', 'catavgmax')


def pool_type(name: str | None) -> str:
    """timm's --gp value as one of POOL_TYPES (None: 'avg', the models' default); UserError otherwise."""
    if name is None:
        return 'avg'
    pool = name.lower()
    pool = (pool[4:] or 'avg') if pool.startswith('fast') else pool
    if pool not in POOL_TYPES:
        raise UserError(f'--gp {name!r} is not a global pool; use one of {", ".join(POOL_TYPES)}')
    return pool


def global_pool(x, pool: str = 'avg', keepdims: bool = False):
    """timm's SelectAdaptivePool2d over H, W of NHWC `x`: avg, max, avgmax (the mean of the two) or catavgmax
    (avg then max, concatenated along the channels)."""
    if pool == 'avg':
        return x.mean(axis=(1, 2), keepdims=keepdims)
    avg, top = x.mean(axis=(1, 2), keepdims=keepdims), x.max(axis=(1, 2), keepdims=keepdims)
    if pool == 'max':
        return top
    if pool == 'avgmax':
        return 0.5 * (avg + top)
    if pool == 'catavgmax':
        return jnp.concatenate([avg, top], axis=-1)
    raise ValueError(f'unknown pool {pool!r}')


class RandomLayer(nn.Module):
    """A train-only random layer: its draws are `uniform(shape)` from the 'dropout' rng stream (the one
    method tests intercept to hand timm's layers the same draws)."""

    def uniform(self, shape):
        return jax.random.uniform(self.make_rng('dropout'), shape, jnp.float32)


def drop_path(x, rate: float, uniform):
    """timm's drop_path: rows of `x` with uniform >= 1 - rate are zeroed, the rest scaled by 1 / (1 - rate)."""
    keep = 1.0 - rate
    mask = (_at_least_f32(uniform, x) < keep).astype(x.dtype)
    return x * (mask / keep if keep > 0.0 else mask)


class DropPath(RandomLayer):
    """timm's DropPath (stochastic depth): per sample, keep the residual branch with probability 1 - rate."""

    rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        if not train or self.rate == 0.0:
            return x
        return drop_path(x, self.rate, self.uniform((x.shape[0],) + (1,) * (x.ndim - 1)))


def block_gamma(h: int, w: int, rate: float, block_size: int, gamma_scale: float) -> float:
    """DropBlock's seed probability on an h x w map (timm's formula, in float64 as its Python computes it)."""
    kh, kw = min(block_size, h), min(block_size, w)
    return float(gamma_scale * rate * h * w) / float(kh * kw) / float((h - kh + 1) * (w - kw + 1))


def _at_least_f32(uniform, x):
    """The draws in x's float dtype, at least float32 (float64 runs compare them with float64 thresholds)."""
    return uniform.astype(jnp.promote_types(x.dtype, jnp.float32))


def drop_block(x, rate: float, block_size: int, gamma_scale: float, uniform):
    """timm's drop_block_2d (channels coupled, scale_by_keep) on NHWC `x`, `uniform` of shape (B, H, W, 1).

    Block centres are seeded where uniform < gamma, gamma = gamma_scale * rate * H * W / (kh * kw) /
    ((H - kh + 1) (W - kw + 1)) with kh = min(block_size, H) (kw alike), grown to kh x kw blocks by a stride-1
    max pool (an even block keeps the pool's bottom-right H x W, as timm), zeroed; the kept values are scaled
    by numel / (kept + 1e-7), computed in float32 as torch does (a reciprocal, then the product).
    """
    _, h, w, _ = x.shape
    kh, kw = min(block_size, h), min(block_size, w)
    seeds = (_at_least_f32(uniform, x) < block_gamma(h, w, rate, block_size, gamma_scale)).astype(x.dtype)
    pad = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0))
    blocks = lax.reduce_window(seeds, jnp.zeros((), x.dtype), lax.max, (1, kh, kw, 1), (1, 1, 1, 1), pad)
    keep = 1.0 - blocks[:, (kh + 1) % 2 :, (kw + 1) % 2 :, :]
    scale = jnp.reciprocal(keep.astype(jnp.float32).sum() + jnp.float32(1e-7)) * keep.size  # torch's numel / t
    return x * (keep * scale.astype(x.dtype))


class DropBlock(RandomLayer):
    """timm's DropBlock2d(rate, block_size, gamma_scale) as its ResNets build it; identity in eval mode."""

    rate: float
    block_size: int
    gamma_scale: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool):
        if not train or self.rate == 0.0:
            return x
        return drop_block(x, self.rate, self.block_size, self.gamma_scale, self.uniform(x.shape[:3] + (1,)))
