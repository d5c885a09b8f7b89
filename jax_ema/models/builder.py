"""timm's architecture strings ('ir_r2_k3_s2_e6_c24_se0.25') -> resolved BlockSpecs, as timm's
`decode_arch_def` + `EfficientNetBuilder` (timm/models/_efficientnet_builder.py) resolve them.

A string is a block type ('ds', 'dsa', 'ir', 'cn') followed by options: r repeats, k kernel, s stride
(first block of the stage only), e expansion ratio, c output channels, se squeeze-excite ratio,
n activation (nre relu, nr6 relu6, nhs hard_swish, nsw swish), noskip / skip.
"""

import math
import re

import flax.linen as nn
import jax.numpy as jnp

from jax_ema.models.blocks import Block, BlockSpec, Style, batchnorm_act, conv2d, goog_dense_init, make_divisible
from jax_ema.models.layers import checkpointed

_ACTS = {'re': 'relu', 'r6': 'relu6', 'hs': 'hard_swish', 'sw': 'swish'}


def decode_block(text: str) -> tuple[dict, int]:
    """One block string -> (options, repeats)."""
    kind, *ops = text.split('_')
    opts = {'kind': kind, 'act': None, 'skip': None}
    for op in ops:
        if op in ('noskip', 'skip'):
            opts['skip'] = op == 'skip'
        elif op.startswith('n'):
            opts['act'] = _ACTS[op[1:]]
        else:
            key, value = re.split(r'(\d.*)', op)[:2]
            opts[key] = float(value) if key in ('e', 'se') else int(value)
    if kind not in ('ds', 'dsa', 'ir', 'cn'):
        raise ValueError(f'unsupported block type {kind!r} in {text!r}')
    return opts, opts.pop('r')


def _scale_depth(repeats: list[int], multiplier: float) -> list[int]:
    """timm's `_scale_stage_depth` ('ceil'): scale a stage's total repeats, give them out last block first."""
    total = sum(repeats)
    total_scaled = int(math.ceil(total * multiplier))
    scaled = []
    for r in reversed(repeats):
        rs = max(1, round(r / total * total_scaled))
        scaled.append(rs)
        total -= r
        total_scaled -= rs
    return scaled[::-1]


def build_blocks(
    arch_def,
    *,
    stem_chs: int,
    act: str,
    depth_multiplier: float = 1.0,
    channel_multiplier: float = 1.0,
    se_from_exp: bool = False,
    drop_path_rate: float = 0.0,
) -> tuple[tuple[BlockSpec, ...], ...]:
    """Stages of BlockSpecs for `arch_def` (a list of stages, each a list of block strings).

    se_from_exp=False (EfficientNet, MNASNet): SE channels round(chs * se / exp_ratio), Python rounding;
    True (MobileNetV3): make_divisible(chs * se). chs: the block's expanded (or depthwise) channels.
    The drop path rate grows linearly with the global block index: drop_path_rate * index / count.
    """
    stages = []
    for stage in arch_def:
        decoded = [decode_block(text) for text in stage]
        repeats = _scale_depth([r for _, r in decoded], depth_multiplier)
        stages.append([opts for (opts, _), r in zip(decoded, repeats) for _ in range(r)])
    count = sum(len(s) for s in stages)
    in_chs, index, out = stem_chs, 0, []
    for stage in stages:
        specs = []
        for position, o in enumerate(stage):
            stride = o['s'] if position == 0 else 1
            out_chs = make_divisible(o['c'] * channel_multiplier) if channel_multiplier else o['c']
            exp_ratio = o.get('e', 1.0) if o['kind'] == 'ir' else 1.0
            mid_chs = make_divisible(in_chs * exp_ratio) if o['kind'] == 'ir' else 0
            se_chs = 0
            if o.get('se') and o['kind'] != 'cn':
                chs = mid_chs or in_chs
                se_chs = make_divisible(chs * o['se']) if se_from_exp else round(chs * (o['se'] / exp_ratio))
            same_shape = stride == 1 and in_chs == out_chs
            if o['kind'] == 'cn':
                has_skip = bool(o['skip']) and same_shape
            else:
                has_skip = same_shape and o['skip'] is not False and o['kind'] != 'dsa'
            specs.append(
                BlockSpec(
                    kind=o['kind'],
                    in_chs=in_chs,
                    out_chs=out_chs,
                    kernel=o['k'],
                    stride=stride,
                    act=o['act'] or act,
                    mid_chs=mid_chs,
                    se_chs=se_chs,
                    has_skip=has_skip,
                    pw_act=o['kind'] == 'dsa',
                    drop_path_rate=drop_path_rate * index / count,
                )
            )
            in_chs, index = out_chs, index + 1
        out.append(tuple(specs))
    return tuple(out)


def stem_and_blocks(model, x, style: Style, train: bool):
    """The shared trunk of `model` (an EfficientNet or MobileNetV3, whose compact __call__ calls this): conv_stem
    (3x3/2), bn1 + act, blocks_{s}_{b}; each block recomputed in the backward pass with model.grad_checkpointing
    (timm's set_grad_checkpointing)."""
    x = conv2d(
        x.astype(model.dtype),
        model.stem_chs(),
        3,
        2,
        pad_type=style.pad_type,
        dtype=style.dtype,
        param_dtype=style.param_dtype,
        name='conv_stem',
    )
    x = batchnorm_act(x, style, train, model.act, 'bn1')
    block = checkpointed(Block) if model.grad_checkpointing else Block
    for s, stage in enumerate(model.block_specs()):
        for b, spec in enumerate(stage):
            x = block(spec, style, name=f'blocks_{s}_{b}')(x, train)
    return x


def classifier(x, num_classes: int, drop_rate: float, style: Style, train: bool):
    """Dropout (--drop) then the Linear classifier, initialised as timm's `_init_weight_goog`."""
    x = nn.Dropout(drop_rate, deterministic=not train)(x)
    x = nn.Dense(
        num_classes,
        dtype=style.dtype,
        param_dtype=style.param_dtype,
        kernel_init=goog_dense_init,
        bias_init=nn.initializers.zeros,
        name='classifier',
    )(x)
    return x.astype(jnp.promote_types(style.dtype, jnp.float32))  # float32 unless dtype is float64
