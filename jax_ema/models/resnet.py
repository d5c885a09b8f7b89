"""ResNet-18/34/50/101/152 mirroring timm's `resnet18`..`resnet152` one-to-one (names, layout, init)."""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.models.layers import BatchNorm, cast_init, conv, max_pool


class BasicBlock(nn.Module):
    """Two 3x3 convs; stride in conv1; last BN zero-initialised (timm zero_init_last)."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        cv, bn = _layers(self)
        shortcut = x
        y = cv(self.planes, 3, self.stride, name='conv1')(x)
        y = nn.relu(bn(name='bn1')(y, train))
        y = cv(self.planes, 3, name='conv2')(y)
        y = bn(scale_init=nn.initializers.zeros, name='bn2')(y, train)
        if self.downsample:
            shortcut = cv(self.planes, 1, self.stride, name='downsample_conv')(x)
            shortcut = bn(name='downsample_bn')(shortcut, train)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 expanding 4x; last BN zero-initialised."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        cv, bn = _layers(self)
        shortcut = x
        out = self.planes * self.expansion
        y = cv(self.planes, 1, name='conv1')(x)
        y = nn.relu(bn(name='bn1')(y, train))
        y = cv(self.planes, 3, self.stride, name='conv2')(y)
        y = nn.relu(bn(name='bn2')(y, train))
        y = cv(out, 1, name='conv3')(y)
        y = bn(scale_init=nn.initializers.zeros, name='bn3')(y, train)
        if self.downsample:
            shortcut = cv(out, 1, self.stride, name='downsample_conv')(x)
            shortcut = bn(name='downsample_bn')(shortcut, train)
        return nn.relu(y + shortcut)


def _layers(block):
    """conv and BatchNorm constructors carrying the block's compute and param dtypes."""
    dtypes = dict(dtype=block.dtype, param_dtype=block.param_dtype)
    return functools.partial(conv, **dtypes), functools.partial(BatchNorm, **dtypes)


def _torch_linear_bias_init(fan_in: int):
    """torch.nn.Linear bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: nn.initializers.uniform(2 * bound)(key, shape, dtype) - bound


class ResNet(nn.Module):
    """timm ResNet with the default stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool; avg pool + fc head.

    Submodule names are timm's state_dict names with '.' -> '_': conv1, bn1, layer{s}_{b}, fc.
    """

    block: type
    layers: Sequence[int]
    num_classes: int
    dtype: Any = jnp.float32  # compute dtype (bfloat16 for --amp and --model-dtype bfloat16)
    param_dtype: Any = jnp.float32  # storage dtype of the params (bfloat16 for --model-dtype bfloat16)

    @nn.compact
    def __call__(self, x, train: bool = False):
        cv, bn = _layers(self)
        x = cv(64, 7, 2, name='conv1')(x)
        x = nn.relu(bn(name='bn1')(x, train))
        x = max_pool(x, 3, 2, 1)
        inplanes = 64
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers)):
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                downsample = b == 0 and (stride != 1 or inplanes != planes * self.block.expansion)
                x = self.block(
                    planes,
                    stride,
                    downsample,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f'layer{stage + 1}_{b}',
                )(x, train)
                inplanes = planes * self.block.expansion
        x = x.mean(axis=(1, 2))
        # torch.nn.Linear default init: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=cast_init(nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')),
            bias_init=cast_init(_torch_linear_bias_init(inplanes)),
            name='fc',
        )(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))  # float32 unless dtype is float64


RESNET_LAYOUTS = {
    'resnet18': (BasicBlock, (2, 2, 2, 2)),
    'resnet34': (BasicBlock, (3, 4, 6, 3)),
    'resnet50': (Bottleneck, (3, 4, 6, 3)),
    'resnet101': (Bottleneck, (3, 4, 23, 3)),
    'resnet152': (Bottleneck, (3, 8, 36, 3)),
}


def resnet(name: str, num_classes: int, dtype=jnp.float32, param_dtype=jnp.float32) -> ResNet:
    block, layers = RESNET_LAYOUTS[name]
    return ResNet(block=block, layers=layers, num_classes=num_classes, dtype=dtype, param_dtype=param_dtype)
