"""Blocks of timm's EfficientNet / MobileNetV3 family (timm/models/_efficientnet_blocks.py) in flax.linen.

Submodule names are timm's (conv_pw, bn1, conv_dw, se.conv_reduce, ...), so the converter maps them by name.
Convolutions pad as timm's `create_conv2d`: symmetric `((stride - 1) + (kernel - 1)) // 2` by default, or
TensorFlow 'SAME' (asymmetric, extra row/column at the end) for the `tf_` models (`pad_type='same'`).
BatchNorm is torch's (layers.BatchNorm), followed by the activation as timm's BatchNormAct2d.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_ema.models.layers import BatchNorm, DropPath


@jax.custom_jvp
def hard_sigmoid(x):
    """relu6(x + 3) / 6, with torch's gradient: the slope is float32(1/6) whatever the dtype.

    torch's Hardsigmoid backward multiplies by the float constant 1.0f / 6.0f even in float64, 3e-8 off
    1/6; matching it keeps float64 training trajectories equal to timm's (no effect in float32).
    """
    return nn.relu6(x + 3.0) / 6.0


@hard_sigmoid.defjvp
def _hard_sigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    slope = jnp.where((x > -3.0) & (x < 3.0), jnp.asarray(np.float32(1.0) / np.float32(6.0), x.dtype), 0.0)
    return hard_sigmoid(x), t * slope.astype(x.dtype)


ACTIVATIONS = {
    'relu': nn.relu,
    'relu6': nn.relu6,
    'swish': nn.swish,  # = SiLU
    'hard_swish': nn.hard_swish,  # x * relu6(x + 3) / 6, torch's Hardswish
    'sigmoid': nn.sigmoid,
    'hard_sigmoid': hard_sigmoid,  # relu6(x + 3) / 6, torch's Hardsigmoid
}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding: nearest multiple of `divisor`, at least `min_value`, never 10% below `v`."""
    min_value = min_value or divisor
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * v else rounded


def goog_conv_init(groups: int):
    """timm's `_init_weight_goog` for convs: normal(0, sqrt(2 / fan_out)), fan_out = kh * kw * out / groups."""

    def init(key, shape, dtype=jnp.float32):
        kh, kw, _, out = shape
        return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (kh * kw * out // groups))

    return init


def goog_dense_init(key, shape, dtype=jnp.float32):
    """timm's `_init_weight_goog` for Linear: uniform(-r, r), r = 1 / sqrt(out_features)."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one axis: total so that out = ceil(size / stride), extra at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(
    x,
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    name: str,
    groups: int = 1,
    use_bias: bool = False,
    pad_type: str = '',
    dtype: Any,
    param_dtype: Any,
):
    """timm's `create_conv2d` applied to `x` (NHWC): a Conv2d, or Conv2dSame for TF 'same' padding.

    timm pads 'same' statically (symmetric) when stride is 1 and the kernel odd, else from the input size.
    """
    k, s = kernel, stride
    if pad_type == 'same' and (s > 1 or (k - 1) % 2):
        padding = [tf_same_padding(x.shape[axis], k, s) for axis in (1, 2)]
    else:
        p = ((s - 1) + (k - 1)) // 2
        padding = [(p, p), (p, p)]
    return nn.Conv(
        features,
        (k, k),
        strides=(s, s),
        padding=padding,
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=goog_conv_init(groups),
        bias_init=nn.initializers.zeros,
        name=name,
    )(x)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block, resolved by the builder: what timm's EfficientNetBuilder passes to the block class."""

    kind: str  # 'ds' / 'dsa' (DepthwiseSeparableConv), 'ir' (InvertedResidual), 'cn' (ConvBnAct)
    in_chs: int
    out_chs: int
    kernel: int
    stride: int
    act: str
    mid_chs: int = 0  # 'ir': the expanded channels
    se_chs: int = 0  # squeeze-excite reduced channels; 0: no SE
    has_skip: bool = False
    pw_act: bool = False  # 'dsa': activation after the point-wise conv
    drop_path_rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class Style:
    """Model-wide settings of the blocks."""

    pad_type: str = ''  # '' torch symmetric padding, 'same' TF padding
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    se_act: str | None = None  # None: the block's activation
    se_gate: str = 'sigmoid'
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32


def batchnorm_act(x, style: Style, train: bool, act: str | None, name: str):
    """timm's BatchNormAct2d: torch BatchNorm2d, then the activation (None: none)."""
    x = BatchNorm(momentum=style.bn_momentum, epsilon=style.bn_eps, dtype=style.dtype, name=name)(x, train)
    return x if act is None else ACTIVATIONS[act](x)


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite: global mean -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> gate -> scale x."""

    rd_chs: int
    act: str
    gate: str
    style: Style

    @nn.compact
    def __call__(self, x):
        s = self.style
        se = x.mean(axis=(1, 2), keepdims=True)
        se = conv2d(se, self.rd_chs, 1, use_bias=True, dtype=s.dtype, param_dtype=s.param_dtype, name='conv_reduce')
        se = ACTIVATIONS[self.act](se)
        se = conv2d(se, x.shape[-1], 1, use_bias=True, dtype=s.dtype, param_dtype=s.param_dtype, name='conv_expand')
        return x * ACTIVATIONS[self.gate](se)


class Block(nn.Module):
    """timm's DepthwiseSeparableConv ('ds', 'dsa'), InvertedResidual ('ir') or ConvBnAct ('cn')."""

    spec: BlockSpec
    style: Style

    def _conv(self, x, features, kernel, stride=1, groups=1, *, name):
        s = self.style
        return conv2d(
            x,
            features,
            kernel,
            stride,
            groups=groups,
            pad_type=s.pad_type,
            dtype=s.dtype,
            param_dtype=s.param_dtype,
            name=name,
        )

    def _se(self, x):
        b, s = self.spec, self.style
        if not b.se_chs:
            return x
        return SqueezeExcite(b.se_chs, s.se_act or b.act, s.se_gate, s, name='se')(x)

    @nn.compact
    def __call__(self, x, train: bool):
        b, s = self.spec, self.style
        shortcut = x
        if b.kind == 'cn':
            x = self._conv(x, b.out_chs, b.kernel, b.stride, name='conv')
            x = batchnorm_act(x, s, train, b.act, 'bn1')
        elif b.kind in ('ds', 'dsa'):
            x = self._conv(x, b.in_chs, b.kernel, b.stride, groups=b.in_chs, name='conv_dw')
            x = batchnorm_act(x, s, train, b.act, 'bn1')
            x = self._se(x)
            x = self._conv(x, b.out_chs, 1, name='conv_pw')
            x = batchnorm_act(x, s, train, b.act if b.pw_act else None, 'bn2')
        elif b.kind == 'ir':
            x = self._conv(x, b.mid_chs, 1, name='conv_pw')
            x = batchnorm_act(x, s, train, b.act, 'bn1')
            x = self._conv(x, b.mid_chs, b.kernel, b.stride, groups=b.mid_chs, name='conv_dw')
            x = batchnorm_act(x, s, train, b.act, 'bn2')
            x = self._se(x)
            x = self._conv(x, b.out_chs, 1, name='conv_pwl')
            x = batchnorm_act(x, s, train, None, 'bn3')
        else:
            raise ValueError(f'unknown block kind {b.kind!r}')
        if b.has_skip:
            x = DropPath(b.drop_path_rate, name='drop_path')(x, train) + shortcut
        return x
