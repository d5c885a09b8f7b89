"""EfficientNet-B0 … B3, tf_efficientnet_b0 and MNASNet-100 mirroring timm's (timm/models/efficientnet.py).

Variables are named as timm's state_dict with '.' -> '_' before digits: conv_stem, bn1, blocks_{s}_{b}
(conv_pw, bn1, conv_dw, bn2, se/conv_reduce, se/conv_expand, conv_pwl, bn3), conv_head, bn2, classifier.
Head: conv_head 1x1 -> bn2 + act -> global average -> dropout (--drop) -> classifier.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.models.blocks import Style, batchnorm_act, conv2d, make_divisible
from jax_ema.models.builder import build_blocks, classifier, stem_and_blocks
from jax_ema.models.layers import check_channels, global_pool

# timm's _gen_efficientnet arch_def (B0; B1 is depth 1.1) and _gen_mnasnet_b1 (mnasnet_100).
EFFICIENTNET_ARCH = (
    ('ds_r1_k3_s1_e1_c16_se0.25',),
    ('ir_r2_k3_s2_e6_c24_se0.25',),
    ('ir_r2_k5_s2_e6_c40_se0.25',),
    ('ir_r3_k3_s2_e6_c80_se0.25',),
    ('ir_r3_k5_s1_e6_c112_se0.25',),
    ('ir_r4_k5_s2_e6_c192_se0.25',),
    ('ir_r1_k3_s1_e6_c320_se0.25',),
)
MNASNET_B1_ARCH = (
    ('ds_r1_k3_s1_c16_noskip',),
    ('ir_r3_k3_s2_e3_c24',),
    ('ir_r3_k5_s2_e3_c40',),
    ('ir_r3_k5_s2_e6_c80',),
    ('ir_r2_k3_s1_e6_c96',),
    ('ir_r4_k5_s2_e6_c192',),
    ('ir_r1_k3_s1_e6_c320_noskip',),
)

# name -> EfficientNet fields. tf_ variants: TF 'same' padding and BatchNorm eps 1e-3 (timm's
# BN_EPS_TF_DEFAULT; the momentum stays torch's 0.1 since timm does not set bn_momentum for them).
EFFICIENTNETS = {
    'efficientnet_b0': dict(arch=EFFICIENTNET_ARCH, act='swish'),
    'efficientnet_b1': dict(arch=EFFICIENTNET_ARCH, act='swish', depth_multiplier=1.1),
    'efficientnet_b2': dict(arch=EFFICIENTNET_ARCH, act='swish', channel_multiplier=1.1, depth_multiplier=1.2),
    'efficientnet_b3': dict(arch=EFFICIENTNET_ARCH, act='swish', channel_multiplier=1.2, depth_multiplier=1.4),
    'tf_efficientnet_b0': dict(arch=EFFICIENTNET_ARCH, act='swish', pad_type='same', bn_eps=1e-3),
    'mnasnet_100': dict(arch=MNASNET_B1_ARCH, act='relu'),
}

# timm's EfficientNet.group_matcher(coarse=False) (layer-wise lr decay): conv_head / bn2 join the last block.
GROUP_MATCHER = dict(stem=r'^conv_stem|bn1', blocks=[(r'^blocks\.(\d+)\.(\d+)', None), (r'conv_head|bn2', (99999,))])


class EfficientNet(nn.Module):
    """timm's EfficientNet class: stem 3x3/2, the blocks of `arch`, conv head, pooled linear classifier."""

    arch: tuple
    num_classes: int
    act: str = 'swish'
    depth_multiplier: float = 1.0
    channel_multiplier: float = 1.0
    stem_size: int = 32
    num_features: int = 1280
    pad_type: str = ''
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    global_pool: str = 'avg'
    in_chans: int = 3
    grad_checkpointing: bool = False  # each block recomputed in the backward pass (timm's set_grad_checkpointing)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def style(self) -> Style:
        return Style(
            pad_type=self.pad_type,
            bn_eps=self.bn_eps,
            bn_momentum=self.bn_momentum,
            se_gate='sigmoid',
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def stem_chs(self) -> int:
        return make_divisible(self.stem_size * self.channel_multiplier)

    def block_specs(self):
        """The resolved blocks, one tuple per stage."""
        return build_blocks(
            self.arch,
            stem_chs=self.stem_chs(),
            act=self.act,
            depth_multiplier=self.depth_multiplier,
            channel_multiplier=self.channel_multiplier,
            drop_path_rate=self.drop_path_rate,
        )

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_channels(x, self.in_chans)
        style = self.style()
        x = stem_and_blocks(self, x, style, train)
        x = conv2d(
            x,
            make_divisible(self.num_features * self.channel_multiplier),
            1,
            pad_type=self.pad_type,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name='conv_head',
        )
        x = batchnorm_act(x, style, train, self.act, 'bn2')
        return classifier(global_pool(x, self.global_pool), self.num_classes, self.drop_rate, style, train)


def efficientnet(name: str, num_classes: int, **kwargs) -> EfficientNet:
    return EfficientNet(num_classes=num_classes, **{**EFFICIENTNETS[name], **kwargs})  # kwargs win (bn_eps)
