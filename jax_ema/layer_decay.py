"""Layer-wise lr decay (--layer-decay) as timm's `param_groups_layer_decay` groups the layers.

timm gives each parameter a layer id from its model's `group_matcher(coarse=False)` (regexes on the
state_dict names: the stem, then one group per block, then the unmatched head), as `group_with_matcher`
orders them; with n ids, layer i trains at lr * max(min_scale, layer_decay ** (n - 1 - i)), and a layer whose
scale is below `no_opt_scale` is not trained at all. Its scheduler applies the scale (every schedule but
'none', which builds no scheduler and so leaves every layer at the base lr).

Here the scale is one float per parameter leaf; optim.create_optimizer multiplies each leaf's update by it.
Every optimizer built there is linear in the lr (the decoupled decays too), so this is timm's per-group lr.
"""

from __future__ import annotations

import math
import re

import jax

from jax_ema.convert import timm_param_name
from jax_ema.errors import UserError
from jax_ema.models.efficientnet import EFFICIENTNETS, GROUP_MATCHER as EFFICIENTNET_MATCHER
from jax_ema.models.mobilenetv3 import GROUP_MATCHER as MOBILENETV3_MATCHER
from jax_ema.models.resnet import GROUP_MATCHER as RESNET_MATCHER, RESNET_LAYOUTS
from jax_ema.pretrained_cfgs import split_model_name

_MERGE = 99999.0  # timm's MATCH_PREV_GROUP: a match with this suffix joins the group before it


def group_matcher(model_name: str) -> dict:
    """The timm model's group_matcher(coarse=False)."""
    name = split_model_name(model_name)[0]
    if name in RESNET_LAYOUTS:
        return RESNET_MATCHER
    return EFFICIENTNET_MATCHER if name in EFFICIENTNETS else MOBILENETV3_MATCHER


def layer_ids(names, matcher: dict) -> dict:
    """{name: layer id} as timm's group_with_matcher(names, matcher, reverse=True): each name's ordinal is
    (matcher entry, the regex's numbers..., suffix...) of the first regex that matches it (inf: none); ids count
    the distinct ordinals in sorted order, an ordinal ending in MATCH_PREV_GROUP taking the id before it."""
    rules = []
    for ordinal, spec in enumerate(matcher.values()):
        for regex, suffix in [(spec, None)] if isinstance(spec, str) else spec:
            rules.append((re.compile(regex), float(ordinal), suffix or ()))

    def ordinal_of(name):
        for regex, ordinal, suffix in rules:
            found = regex.match(name)
            if found:
                return (ordinal, *(float(g) for g in found.groups() if g is not None), *map(float, suffix))
        return (math.inf,)

    ordinals = {name: ordinal_of(name) for name in names}
    ids, current = {}, -1
    for ordinal in sorted(set(ordinals.values())):
        if current < 0 or ordinal[-1] != _MERGE:
            current += 1
        ids[ordinal] = current
    return {name: ids[ordinal] for name, ordinal in ordinals.items()}


def lr_scales(model_name: str, params, layer_decay: float, min_scale: float = 0.0, no_opt_scale=None, sched=''):
    """A tree like `params` of each leaf's lr scale (0.0: not trained, timm's no_opt_scale)."""
    if not layer_decay > 0:
        raise UserError(f'--layer-decay must be > 0, got {layer_decay}; timm recipes use e.g. 0.65 to 0.85')
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [timm_param_name(tuple(k.key for k in path)) for path, _ in flat]
    ids = layer_ids(names, group_matcher(model_name))
    top = max(ids.values())

    def scale(name):
        value = max(min_scale, layer_decay ** (top - ids[name]))
        if no_opt_scale and value < no_opt_scale:
            return 0.0
        return 1.0 if sched == 'none' else value  # timm's 'none' has no scheduler to apply the scales

    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [scale(name) for name in names])


def model_lr_scales(config) -> dict:
    """`lr_scales` of the params of a `config.Config`'s model (--layer-decay and its two companions)."""
    from jax_ema.models import create_model, in_chans, model_kwargs

    kwargs = model_kwargs(config)
    model = create_model(config.model, 1, **kwargs)
    x = jax.ShapeDtypeStruct((1, 32, 32, in_chans(kwargs)), jax.numpy.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)['params']
    return lr_scales(
        config.model,
        params,
        config.layer_decay,
        config.layer_decay_min_scale,
        config.layer_decay_no_opt_scale,
        config.sched,
    )
