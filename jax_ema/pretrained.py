"""timm's `--pretrained`: a model's pretrained weights from the Hugging Face hub (or `--pretrained-path FILE`),
converted by `convert.to_flax`, with the classifier handled as timm's `load_pretrained` handles it.

`--model NAME` takes NAME's default tag and `--model NAME.TAG` that tag (pretrained_cfgs.py); the file
is `hf_hub_download(hub_id, 'model.safetensors')`, so the hub's cache and settings apply (HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN). When the file's classifier does not fit the run's classes (or the
file has none) the classifier keeps its fresh initialisation and one log line says so; when it fits it
is loaded. With `--in-chans N` (N != 3) the file's 3-channel first conv (timm's pretrained_cfg 'first_conv')
is adapted as timm's `adapt_input_conv` does it: summed over RGB for 1 channel, else the RGB filters repeated,
cut to N and scaled by 3/N. The EMA then starts from these weights, as timm's ModelEmaV3 copies the model it is
given.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from jax_ema import convert, data_config, timm_io
from jax_ema.errors import UserError
from jax_ema.models import in_chans as model_in_chans
from jax_ema.pretrained_cfgs import PretrainedCfg, first_conv, lookup, split_model_name

log = logging.getLogger('jax_ema.pretrained')


def hub_cfg(model: str) -> PretrainedCfg:
    """The pretrained config `--pretrained` fetches for `model` ('arch' or 'arch.tag')."""
    cfg = data_config.model_pretrained_cfg(model)
    if cfg is None:
        raise UserError(
            f'there are no pretrained weights of {model} in timm; leave out --pretrained, or give a '
            'weights file with --pretrained-path FILE'
        )
    return cfg


def download(cfg: PretrainedCfg) -> Path:
    """The local path of cfg.file in the hub repo cfg.hub_id: from the cache, else downloaded into it."""
    how = (
        f'get it where there is network with `hf download {cfg.hub_id} {cfg.file}` (into the same HF_HOME / '
        'HF_HUB_CACHE), or give the file with --pretrained-path FILE'
    )
    try:
        import huggingface_hub  # pylint: disable=g-import-not-at-top
        from huggingface_hub import constants, errors  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise UserError(
            '--pretrained downloads with huggingface_hub (pip install huggingface_hub); or give the '
            'weights file with --pretrained-path FILE'
        ) from None
    try:
        return Path(huggingface_hub.hf_hub_download(cfg.hub_id, cfg.file))
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        why = 'HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE else 'the hub cannot be reached'
        raise UserError(
            f'{cfg.file} of {cfg.hub_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; {how}'
        ) from None
    except errors.RepositoryNotFoundError:  # also a gated repo
        raise UserError(f'{cfg.hub_id} is not on the hub or needs a login (hf auth login); {how}') from None
    except errors.EntryNotFoundError:
        raise UserError(
            f'{cfg.hub_id} on the hub has no {cfg.file}; give the weights with --pretrained-path FILE'
        ) from None
    except Exception as e:  # pylint: disable=broad-except  # network or disk: one line, never a traceback
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise UserError(
            f'cannot fetch {cfg.file} of {cfg.hub_id} ({type(e).__name__}{": " + reason if reason else ""}); {how}'
        ) from None


def _classes(state_dict: dict, head: dict) -> str:
    weights = [np.shape(state_dict[k]) for k in head if k.endswith('.weight') and k in state_dict]
    return f'{weights[0][0]} classes' if weights else 'none'


def read_weights(model: str, pretrained_path=None) -> dict:
    """The timm state_dict `--pretrained` starts from: the file `pretrained_path`, else the hub's file for
    `model` (fetched into the cache if it is not there yet)."""
    if pretrained_path is None:
        cfg = hub_cfg(model)
        log.info('Pretrained weights of %s: %s on the Hugging Face hub', model, cfg.hub_id)
        pretrained_path = download(cfg)
    return timm_io.load_timm_state_dict(pretrained_path)  # logs the file


def adapt_input_conv(in_chans: int, weight: np.ndarray, base_chans: int = 3) -> np.ndarray:
    """A first conv's OIHW `weight` (`base_chans` input channels) for `in_chans` input channels, as timm's
    adapt_input_conv: 1 channel sums the filters over the input channels; more repeat them ceil(in_chans /
    base_chans) times, cut to in_chans, scaled by base_chans / in_chans. Computed in float32 and returned in
    the weight's dtype (timm: `.float()`, then `.to(conv_type)`)."""
    if in_chans == base_chans:
        return weight
    weight32 = np.asarray(weight).astype(np.float32)
    if in_chans == 1:
        adapted = weight32.sum(axis=1, keepdims=True)
    else:
        repeats = math.ceil(in_chans / base_chans)
        adapted = np.tile(weight32, (1, repeats, 1, 1))[:, :in_chans] * np.float32(base_chans / in_chans)
    return adapted.astype(weight.dtype)


def adapt_first_conv(model: str, state_dict: dict, arch: dict | None = None) -> tuple[dict, dict]:
    """(state_dict, fresh): the first conv of `state_dict` made to fit the model's in_chans (`arch`), where and as
    timm's load_pretrained adapts it; `fresh` {timm key: (flax path, timm shape)} names a first conv timm cannot
    adapt (not 4-D), which then keeps the model's initialisation. A 4-D first conv without the pretrained
    config's input channels (timm's input_size[0], 3) that does not fit the model is refused in one line."""
    architecture = split_model_name(model)[0]
    name, in_chans = first_conv(architecture), model_in_chans(arch)
    cfg = lookup(model)
    base_chans = cfg.input_size[0] if cfg else 3
    key = f'{name}.weight'
    if key not in state_dict:  # to_flax names the missing key
        return state_dict, {}
    weight = np.asarray(state_dict[key])
    path, shape = convert.timm_entry(architecture, key, arch)
    if weight.shape == shape:
        if in_chans != base_chans:
            log.warning(
                'Pretrained %s weights already match the model (%d input channels), not the %d of its pretrained '
                'config: loaded unchanged',
                name,
                in_chans,
                base_chans,
            )
        return state_dict, {}
    if weight.ndim == 4 and weight.shape[1] != base_chans:  # timm's consistency check (our stems: groups 1)
        raise UserError(
            f'the pretrained {key} has shape {weight.shape}: {weight.shape[1]} input channels, not the '
            f'{base_chans} of {architecture} pretrained weights, and the model takes {in_chans} (--in-chans); '
            f'give weights with {base_chans} or {in_chans} input channels'
        )
    if in_chans == base_chans:  # another shape: to_flax names the mismatch
        return state_dict, {}
    if weight.ndim != 4:  # timm: NotImplementedError, the layer keeps its initialisation
        log.warning('Unable to convert pretrained %s weights, using random init for this layer', name)
        return dict(state_dict, **{key: np.zeros(shape, np.float32)}), {key: (path, shape)}
    log.info('Converted input conv %s pretrained weights from %d to %d channel(s)', name, base_chans, in_chans)
    return dict(state_dict, **{key: adapt_input_conv(in_chans, weight, base_chans)}), {}


def load_pretrained(model: str, num_classes: int, init_variables, state_dict: dict, arch: dict | None = None) -> dict:
    """float32 {'params', 'batch_stats'} (numpy) for create_model(model, num_classes, **arch): the timm
    `state_dict`, its first conv adapted to --in-chans (adapt_first_conv), with the classifier of
    `init_variables` (the model's initialisation; read only then) when the state_dict's does not fit
    `num_classes`."""
    architecture = split_model_name(model)[0]
    state_dict, fresh = adapt_first_conv(model, state_dict, arch)
    head = convert.classifier(architecture, num_classes, arch)
    fits = all(key in state_dict and np.shape(state_dict[key]) == shape for key, (_, shape) in head.items())
    if fits:
        log.info('Pretrained classifier kept (%d classes)', num_classes)
    else:  # timm's load_pretrained drops the classifier and leaves the model's initialisation
        log.info(
            "The pretrained classifier (%s) does not fit this run's %d classes: the classifier starts afresh",
            _classes(state_dict, head),
            num_classes,
        )
        state_dict = dict(state_dict, **{key: np.zeros(shape, np.float32) for key, (_, shape) in head.items()})
        fresh.update(head)
    variables = convert.to_flax(architecture, state_dict, arch)
    for flax_path, _ in fresh.values():
        init, node = init_variables, variables
        for part in flax_path[:-1]:
            init, node = init[part], node[part]
        node[flax_path[-1]] = np.array(init[flax_path[-1]], np.float32)
    return _float32(variables)


def _float32(tree):
    if isinstance(tree, dict):
        return {k: _float32(v) for k, v in tree.items()}
    return tree.astype(np.float32) if np.issubdtype(tree.dtype, np.floating) else tree
