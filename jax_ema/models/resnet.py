"""ResNet-18/34/50/101/152 mirroring timm's `resnet18`..`resnet152` one-to-one (names, layout, init), with
timm's regularisation: dropout before the classifier (drop_rate), drop path (stochastic depth, the rate growing
linearly over the blocks) and DropBlock in the last two stages; and its global pools (global_pool)."""

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.models.layers import (
    BatchNorm,
    DropBlock,
    DropPath,
    cast_init,
    check_channels,
    checkpointed,
    conv,
    global_pool,
    max_pool,
)

# timm's resnet.drop_blocks: (block_size, gamma_scale) of the DropBlock in each stage; none in the first two.
DROP_BLOCK_STAGES = (None, None, (5, 0.25), (3, 1.0))

# timm's ResNet.group_matcher(coarse=False): the stem, then one group per block (layer-wise lr decay).
GROUP_MATCHER = dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\d+)\.(\d+)')


class BasicBlock(nn.Module):
    """Two 3x3 convs; stride in conv1; last BN zero-initialised (timm zero_init_last). DropBlock after bn1,
    drop path on the residual branch before the sum, as timm's."""

    planes: int
    stride: int = 1
    downsample: bool = False
    drop_path_rate: float = 0.0
    drop_block: tuple | None = None  # (rate, block_size, gamma_scale)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        cv, bn = _layers(self)
        y = cv(self.planes, 3, self.stride, name='conv1')(x)
        y = nn.relu(_drop_block(self, bn(name='bn1')(y, train), train))
        y = cv(self.planes, 3, name='conv2')(y)
        y = bn(scale_init=nn.initializers.zeros, name='bn2')(y, train)
        return nn.relu(_residual(self, y, x, train))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 expanding 4x; last BN zero-initialised. DropBlock after bn2,
    drop path on the residual branch before the sum, as timm's."""

    planes: int
    stride: int = 1
    downsample: bool = False
    drop_path_rate: float = 0.0
    drop_block: tuple | None = None  # (rate, block_size, gamma_scale)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        cv, bn = _layers(self)
        y = cv(self.planes, 1, name='conv1')(x)
        y = nn.relu(bn(name='bn1')(y, train))
        y = cv(self.planes, 3, self.stride, name='conv2')(y)
        y = nn.relu(_drop_block(self, bn(name='bn2')(y, train), train))
        y = cv(self.planes * self.expansion, 1, name='conv3')(y)
        y = bn(scale_init=nn.initializers.zeros, name='bn3')(y, train)
        return nn.relu(_residual(self, y, x, train))


def _layers(block):
    """conv and BatchNorm constructors carrying the block's compute and param dtypes."""
    dtypes = dict(dtype=block.dtype, param_dtype=block.param_dtype)
    return functools.partial(conv, **dtypes), functools.partial(BatchNorm, **dtypes)


def _drop_block(block, y, train: bool):
    if block.drop_block is None:
        return y
    rate, size, gamma_scale = block.drop_block
    return DropBlock(rate, size, gamma_scale, name='drop_block')(y, train)


def _residual(block, y, x, train: bool):
    """The block's branch `y` (drop path applied) plus its input `x` (downsampled when the block says so)."""
    cv, bn = _layers(block)
    if block.drop_path_rate > 0.0:
        y = DropPath(block.drop_path_rate, name='drop_path')(y, train)
    shortcut = x
    if block.downsample:
        out = block.planes * block.expansion
        shortcut = bn(name='downsample_bn')(cv(out, 1, block.stride, name='downsample_conv')(x), train)
    return y + shortcut


def _torch_linear_bias_init(fan_in: int):
    """torch.nn.Linear bias default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: nn.initializers.uniform(2 * bound)(key, shape, dtype) - bound


class ResNet(nn.Module):
    """timm ResNet with the default stem: 7x7/2 conv, BN, ReLU, 3x3/2 max pool; global pool + dropout + fc head.

    Submodule names are timm's state_dict names with '.' -> '_': conv1, bn1, layer{s}_{b}, fc.
    drop_path_rate: block i of n gets drop_path_rate * i / (n - 1) (timm's linear rule; block 0 none);
    drop_block_rate: DropBlock in every block of stages 3 and 4 (DROP_BLOCK_STAGES). All three are train-only.
    grad_checkpointing: each block's activations recomputed in the backward pass (timm's set_grad_checkpointing).
    """

    block: type
    layers: Sequence[int]
    num_classes: int
    dtype: Any = jnp.float32  # compute dtype (bfloat16 for --amp and --model-dtype bfloat16)
    param_dtype: Any = jnp.float32  # storage dtype of the params (bfloat16 for --model-dtype bfloat16)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_block_rate: float = 0.0
    global_pool: str = 'avg'
    in_chans: int = 3
    grad_checkpointing: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_channels(x, self.in_chans)
        cv, bn = _layers(self)
        x = cv(64, 7, 2, name='conv1')(x)
        x = nn.relu(bn(name='bn1')(x, train))
        x = max_pool(x, 3, 2, 1)
        inplanes, index, count = 64, 0, sum(self.layers)
        block = checkpointed(self.block) if self.grad_checkpointing else self.block
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), self.layers)):
            drop_block = DROP_BLOCK_STAGES[stage] if self.drop_block_rate else None
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                downsample = b == 0 and (stride != 1 or inplanes != planes * self.block.expansion)
                x = block(
                    planes,
                    stride,
                    downsample,
                    drop_path_rate=self.drop_path_rate * index / max(count - 1, 1),  # timm's i / (n - 1)
                    drop_block=drop_block and (self.drop_block_rate, *drop_block),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f'layer{stage + 1}_{b}',
                )(x, train)
                inplanes, index = planes * self.block.expansion, index + 1
        x = global_pool(x, self.global_pool)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        # torch.nn.Linear default init: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=cast_init(nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')),
            bias_init=cast_init(_torch_linear_bias_init(x.shape[-1])),
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


def resnet(name: str, num_classes: int, dtype=jnp.float32, param_dtype=jnp.float32, **kwargs) -> ResNet:
    """kwargs: ResNet's fields (drop_rate, ..., grad_checkpointing; layers as timm's create_model kwargs, which win
    over the name's layout as in timm: --model-kwargs layers=(1,1,1,1))."""
    block, layers = RESNET_LAYOUTS[name]
    return ResNet(
        num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, **{'block': block, 'layers': layers, **kwargs}
    )
