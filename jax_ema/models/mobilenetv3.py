"""MobileNetV3 large/small 1.0 mirroring timm's `mobilenetv3_large_100` / `mobilenetv3_small_100`
(timm/models/mobilenetv3.py).

Differences from EfficientNet, all timm's: stem 16 channels, hard-swish by default (relu where the arch
string says 'nre'), squeeze-excite from the expanded channels rounded by make_divisible with a ReLU and a
hard-sigmoid gate, and the 'efficient head': global average -> conv_head 1x1 (with bias) -> hard-swish ->
dropout (--drop) -> classifier, with no BatchNorm after conv_head.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.models.blocks import ACTIVATIONS, Style, conv2d, make_divisible
from jax_ema.models.builder import build_blocks, classifier, stem_and_blocks
from jax_ema.models.layers import check_channels, global_pool

# timm's _gen_mobilenet_v3 arch_defs (not 'minimal').
MOBILENETV3_LARGE_ARCH = (
    ('ds_r1_k3_s1_e1_c16_nre',),
    ('ir_r1_k3_s2_e4_c24_nre', 'ir_r1_k3_s1_e3_c24_nre'),
    ('ir_r3_k5_s2_e3_c40_se0.25_nre',),
    ('ir_r1_k3_s2_e6_c80', 'ir_r1_k3_s1_e2.5_c80', 'ir_r2_k3_s1_e2.3_c80'),
    ('ir_r2_k3_s1_e6_c112_se0.25',),
    ('ir_r3_k5_s2_e6_c160_se0.25',),
    ('cn_r1_k1_s1_c960',),
)
MOBILENETV3_SMALL_ARCH = (
    ('ds_r1_k3_s2_e1_c16_se0.25_nre',),
    ('ir_r1_k3_s2_e4.5_c24_nre', 'ir_r1_k3_s1_e3.67_c24_nre'),
    ('ir_r1_k5_s2_e4_c40_se0.25', 'ir_r2_k5_s1_e6_c40_se0.25'),
    ('ir_r2_k5_s1_e3_c48_se0.25',),
    ('ir_r3_k5_s2_e6_c96_se0.25',),
    ('cn_r1_k1_s1_c576',),
)

MOBILENETV3S = {
    'mobilenetv3_large_100': dict(arch=MOBILENETV3_LARGE_ARCH, num_features=1280),
    'mobilenetv3_small_100': dict(arch=MOBILENETV3_SMALL_ARCH, num_features=1024),
}

# timm's MobileNetV3.group_matcher(coarse=False) (layer-wise lr decay): conv_head is in the head's group.
GROUP_MATCHER = dict(stem=r'^conv_stem|bn1', blocks=r'^blocks\.(\d+)\.(\d+)')


class MobileNetV3(nn.Module):
    """timm's MobileNetV3 class with the v3 'efficient head'."""

    arch: tuple
    num_classes: int
    num_features: int = 1280
    act: str = 'hard_swish'
    channel_multiplier: float = 1.0
    stem_size: int = 16
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    global_pool: str = 'avg'
    in_chans: int = 3
    grad_checkpointing: bool = False  # each block recomputed in the backward pass (timm's set_grad_checkpointing)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def stem_chs(self) -> int:
        if self.channel_multiplier < 0.75:  # timm's fix_stem
            return self.stem_size
        return make_divisible(self.stem_size * self.channel_multiplier)

    def block_specs(self):
        """The resolved blocks, one tuple per stage."""
        return build_blocks(
            self.arch,
            stem_chs=self.stem_chs(),
            act=self.act,
            channel_multiplier=self.channel_multiplier,
            se_from_exp=True,
            drop_path_rate=self.drop_path_rate,
        )

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_channels(x, self.in_chans)
        style = Style(
            bn_eps=self.bn_eps,
            bn_momentum=self.bn_momentum,
            se_act='relu',
            se_gate='hard_sigmoid',
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = stem_and_blocks(self, x, style, train)
        x = global_pool(x, self.global_pool, keepdims=True)
        x = conv2d(
            x, self.num_features, 1, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, name='conv_head'
        )
        x = ACTIVATIONS[self.act](x).reshape(x.shape[0], -1)
        return classifier(x, self.num_classes, self.drop_rate, style, train)


def mobilenetv3(name: str, num_classes: int, **kwargs) -> MobileNetV3:
    return MobileNetV3(num_classes=num_classes, **{**MOBILENETV3S[name], **kwargs})
