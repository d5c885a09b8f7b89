"""Convert between timm state_dicts and Flax variables ({'params', 'batch_stats'}), exactly, in numpy.

The mapping is derived from the Flax variable tree of `create_model(name, num_classes, **arch)` plus a name
translation (`arch`: the create_model kwargs that change shapes, global_pool and in_chans, as a checkpoint
records them), so any model whose tree mirrors timm's module names works:
  module path: 'layer1_0' -> 'layer1.0' ('_' before a digit becomes '.'),
               'downsample_conv' -> 'downsample.0', 'downsample_bn' -> 'downsample.1';
  leaves: conv 'kernel' HWIO <-> 'weight' OIHW, dense 'kernel' (in, out) <-> 'weight' (out, in),
          'bias' <-> 'bias', BN 'scale' <-> 'weight', batch_stats 'mean'/'var' <-> 'running_mean'/'running_var'
          (plus 'num_batches_tracked', written as int64 0 and ignored when read).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema.errors import UserError
from jax_ema.models import arch_kwargs, create_model, in_chans

_MODULE_RENAMES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
_STAT_NAMES = {'mean': 'running_mean', 'var': 'running_var'}
_NUM_BATCHES = 'num_batches_tracked'
_HWIO_TO_OIHW = (3, 2, 0, 1)


def _timm_module(path: tuple[str, ...]) -> str:
    parts = [_MODULE_RENAMES.get(p, re.sub(r'_(?=\d)', '.', p)) for p in path]
    return '.'.join(parts)


def _arch(arch: dict | None) -> tuple:
    """The shape-changing create_model kwargs as a hashable key."""
    return tuple(sorted((k, v) for k, v in arch_kwargs(arch).items() if k != 'grad_checkpointing'))


@functools.cache
def _flax_shapes(model_name: str, num_classes: int, arch: tuple = ()) -> dict:
    """{(collection, *path): shape} of the model's variables, without computing anything."""
    model = create_model(model_name, num_classes, **dict(arch))
    x = jax.ShapeDtypeStruct((1, 32, 32, in_chans(dict(arch))), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


@functools.cache
def _classes_axes(model_name: str, arch: tuple = ()) -> dict:
    """{flax_path: axis} of the variables whose shape depends on num_classes (the classifier head)."""
    one, two = _flax_shapes(model_name, 1, arch), _flax_shapes(model_name, 2, arch)
    axes = {}
    for path, shape in one.items():
        diff = [i for i, (a, b) in enumerate(zip(shape, two[path])) if a != b]
        if diff:
            axes[path] = diff[0]
    return axes


@functools.cache
def _mapping(model_name: str, num_classes: int, arch: tuple = ()) -> dict:
    """{timm_key: (flax_path, flax_shape, timm_shape, kind)}; kind in {'conv', 'dense', 'copy', 'count'}."""
    axes = _classes_axes(model_name, arch)
    mapping = {}
    for path, shape in _flax_shapes(model_name, 1, arch).items():
        if path in axes:
            shape = tuple(num_classes if i == axes[path] else d for i, d in enumerate(shape))
        collection, *module, leaf = path
        prefix = _timm_module(tuple(module))
        if collection == 'batch_stats':
            mapping[f'{prefix}.{_STAT_NAMES[leaf]}'] = (path, shape, shape, 'copy')
            if leaf == 'mean':
                mapping[f'{prefix}.{_NUM_BATCHES}'] = (None, (), (), 'count')
        elif leaf == 'kernel' and len(shape) == 4:
            mapping[f'{prefix}.weight'] = (path, shape, tuple(shape[i] for i in _HWIO_TO_OIHW), 'conv')
        elif leaf == 'kernel' and len(shape) == 2:
            mapping[f'{prefix}.weight'] = (path, shape, shape[::-1], 'dense')
        elif leaf in ('scale', 'bias'):
            mapping[f'{prefix}.{"weight" if leaf == "scale" else "bias"}'] = (path, shape, shape, 'copy')
        else:
            raise AssertionError(f'no timm name for flax variable {"/".join(path)}')
    return mapping


def timm_param_name(path: tuple[str, ...]) -> str:
    """timm's state_dict name of the flax param at `path` (module names, then the leaf)."""
    *module, leaf = path
    return f'{_timm_module(tuple(module))}.{"bias" if leaf == "bias" else "weight"}'


def classifier(model_name: str, num_classes: int, arch: dict | None = None) -> dict:
    """{timm key: (flax path, timm shape)} of the classifier head: the variables whose shape depends on
    num_classes (e.g. 'fc.weight', 'fc.bias')."""
    arch = _arch(arch)
    axes = _classes_axes(model_name, arch)
    return {
        key: (path, timm_shape)
        for key, (path, _, timm_shape, _) in _mapping(model_name, num_classes, arch).items()
        if path in axes
    }


def timm_entry(model_name: str, timm_key: str, arch: dict | None = None) -> tuple[tuple, tuple]:
    """(flax path, timm shape) of the variable timm names `timm_key` (one that does not depend on num_classes,
    e.g. the first conv's 'conv1.weight')."""
    path, _, timm_shape, _ = _mapping(model_name, 1, _arch(arch))[timm_key]
    return path, timm_shape


def num_classes(model_name: str, state_dict: dict, arch: tuple = ()) -> int:
    """The number of classes of a timm state_dict's classifier (UserError where it is missing or malformed)."""
    return _num_classes_from_timm(model_name, state_dict, arch)


def _num_classes_from_timm(model_name: str, state_dict: dict, arch: tuple) -> int:
    axes = _classes_axes(model_name, arch)
    for timm_key, (path, _, timm_shape, kind) in _mapping(model_name, 1, arch).items():
        if path in axes:
            if timm_key not in state_dict:
                raise UserError(
                    f'missing key {timm_key!r} in the {model_name} state_dict; pass a complete timm state_dict'
                )
            shape = np.shape(state_dict[timm_key])
            axis = {'conv': _HWIO_TO_OIHW.index(axes[path]), 'dense': 1 - axes[path]}.get(kind, axes[path])
            if len(shape) != len(timm_shape):
                raise UserError(
                    f'shape mismatch for {timm_key!r}: got {shape}, {model_name} expects {len(timm_shape)} dimensions'
                )
            return int(shape[axis])
    raise AssertionError(f'{model_name} has no classifier head')


def _num_classes_from_flax(model_name: str, variables: dict, arch: tuple) -> int:
    for path, axis in _classes_axes(model_name, arch).items():
        node = variables
        for part in path:
            if not hasattr(node, 'keys') or part not in node:
                raise UserError(
                    f'missing flax variable {"/".join(path)} for {model_name}; '
                    f'pass the full {{"params", "batch_stats"}} variables'
                )
            node = node[part]
        if np.ndim(node) <= axis:
            raise UserError(f'shape mismatch for flax variable {"/".join(path)}: got {np.shape(node)}')
        return int(np.shape(node)[axis])
    raise AssertionError(f'{model_name} has no classifier head')


def to_flax(model_name: str, state_dict: dict, arch: dict | None = None) -> dict:
    """timm state_dict (name -> numpy array) -> {'params': ..., 'batch_stats': ...} nested dicts of numpy.
    `arch`: the create_model kwargs of the model (models.arch_kwargs: global_pool, in_chans, extras; others ignored)."""
    arch = _arch(arch)
    mapping = _mapping(model_name, _num_classes_from_timm(model_name, state_dict, arch), arch)
    unknown = [k for k in state_dict if k not in mapping]
    if unknown:
        raise UserError(
            f'unknown key {unknown[0]!r} in the {model_name} state_dict '
            f'({len(unknown)} unknown); pass a timm {model_name} state_dict'
        )
    variables = {'params': {}, 'batch_stats': {}}
    for timm_key, (path, _, shape, kind) in mapping.items():
        if kind == 'count':
            continue
        if timm_key not in state_dict:
            raise UserError(f'missing key {timm_key!r} in the {model_name} state_dict; pass a complete timm state_dict')
        value = np.asarray(state_dict[timm_key])
        if value.shape != shape:
            raise UserError(f'shape mismatch for {timm_key!r}: got {value.shape}, {model_name} expects {shape}')
        if kind == 'conv':
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif kind == 'dense':
            value = value.T
        node = variables
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.array(value, order='C')  # always a copy: never alias the input
    return variables


def to_timm(model_name: str, variables, arch: dict | None = None) -> dict:
    """{'params': ..., 'batch_stats': ...} (numpy or jax leaves) -> timm state_dict of numpy arrays.
    `arch`: the create_model kwargs of the model (models.arch_kwargs: global_pool, in_chans, extras; others ignored)."""
    variables = jax.tree_util.tree_map(np.asarray, dict(variables))
    arch = _arch(arch)
    mapping = _mapping(model_name, _num_classes_from_flax(model_name, variables, arch), arch)
    flat = {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
    expected = {entry[0] for entry in mapping.values() if entry[3] != 'count'}
    unknown = [p for p in flat if p not in expected]
    if unknown:
        raise UserError(
            f'unknown flax variable {"/".join(unknown[0])} for {model_name} '
            f'({len(unknown)} unknown); pass variables of create_model({model_name!r}, ...)'
        )
    state_dict = {}
    for timm_key, (path, flax_shape, _, kind) in mapping.items():
        if kind == 'count':
            state_dict[timm_key] = np.zeros((), np.int64)
            continue
        if path not in flat:
            raise UserError(
                f'missing flax variable {"/".join(path)} for {model_name}; '
                f'pass the full {{"params", "batch_stats"}} variables'
            )
        value = flat[path]
        if value.shape != flax_shape:
            raise UserError(
                f'shape mismatch for flax variable {"/".join(path)} (timm {timm_key!r}): '
                f'got {value.shape}, {model_name} expects {flax_shape}'
            )
        if kind == 'conv':
            value = value.transpose(_HWIO_TO_OIHW)
        elif kind == 'dense':
            value = value.T
        state_dict[timm_key] = np.array(value, order='C')  # always a copy: never alias the input
    return state_dict
