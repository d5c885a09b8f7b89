"""timm weight files in and out: read `.safetensors` / `.pth` / `.pth.tar` / `.bin`, write `.safetensors`.

Reading picks the state_dict from a timm training checkpoint the way timm's `load_state_dict` does:
  use_ema and 'state_dict_ema' (else 'model_ema') when present and not None, otherwise
  'state_dict', otherwise 'model', otherwise the whole file is the state_dict;
then strips the wrapper prefixes '_orig_mod.' (torch.compile) and 'module.' (DDP) from the keys.
PyTorch files are read with `torch.load(weights_only=True)` only (no arbitrary pickles), allowing
`argparse.Namespace`, which timm's training checkpoints store under 'args'. torch is imported only
for those files; this module never imports TensorFlow.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import safetensors
import safetensors.numpy

from jax_ema import checkpoint, convert
from jax_ema.convert import to_flax
from jax_ema.errors import UserError
from jax_ema.models import arch_kwargs, create_model, in_chans

log = logging.getLogger(__name__)

TORCH_SUFFIXES = ('.pth', '.pth.tar', '.pt', '.bin')
SAFETENSORS_SUFFIX = '.safetensors'
_WRAPPER_PREFIXES = ('_orig_mod.', 'module.', '_orig_mod.')  # in timm's clean_state_dict order


def _torch_load(path: Path):
    try:
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise UserError(
            f'reading {str(path)!r} needs PyTorch (pip install torch); or convert it to {SAFETENSORS_SUFFIX}'
        ) from None
    import argparse  # pylint: disable=g-import-not-at-top

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
        if type(e).__name__ != 'UnpicklingError':  # zip/EOF/OS errors of a damaged file
            raise UserError(
                f'cannot read {str(path)!r} as a PyTorch file ({type(e).__name__}); check the file'
            ) from None
        raise UserError(
            f'cannot read {str(path)!r}: it is not a PyTorch file, or it holds objects other than '
            'tensors and plain containers (not loaded, for safety); save the state_dict alone or '
            f'as {SAFETENSORS_SUFFIX}'
        ) from None


def _pick_state_dict(contents, use_ema: bool, path: Path):
    """timm's choice of the state_dict inside a checkpoint dict."""
    if not isinstance(contents, dict):
        raise UserError(
            f'{str(path)!r} holds a {type(contents).__name__}, not a state_dict; '
            'give a timm weights file or training checkpoint'
        )
    key = None
    if use_ema and contents.get('state_dict_ema') is not None:
        key = 'state_dict_ema'
    elif use_ema and contents.get('model_ema') is not None:
        key = 'model_ema'
    elif 'state_dict' in contents:
        key = 'state_dict'
    elif 'model' in contents:
        key = 'model'
    if use_ema and key not in ('state_dict_ema', 'model_ema'):
        log.warning(
            '%s has no EMA weights (state_dict_ema / model_ema); using %s, as timm does',
            path,
            f"'{key}'" if key else 'its state_dict',
        )
    state_dict = contents[key] if key else contents
    if not isinstance(state_dict, dict):
        raise UserError(
            f'{str(path)!r}: {key!r} holds a {type(state_dict).__name__}, not a state_dict; '
            'give a timm weights file or training checkpoint'
        )
    return state_dict, key


def _strip_prefixes(key: str) -> str:
    if key.startswith(_WRAPPER_PREFIXES):
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
    return key


def _to_numpy(value, key: str, path: Path) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, 'detach'):  # a torch tensor; numpy has no bfloat16, so widen that one
        value = value.detach().cpu()
        if str(value.dtype) == 'torch.bfloat16':
            value = value.float()
        return value.numpy()
    raise UserError(f'{str(path)!r}: entry {key!r} is a {type(value).__name__}, not a tensor; give a timm state_dict')


def load_timm_state_dict(path, use_ema: bool = False) -> dict[str, np.ndarray]:
    """A timm state_dict (name -> numpy array) from a `.safetensors` / `.pth` / `.pth.tar` / `.bin` file.

    `use_ema` takes the checkpoint's EMA weights when it has them, else its weights (as timm does).
    """
    return _read(path, use_ema)[0]


def is_timm_file(path) -> bool:
    """Whether `path` names a timm weights file (by its extension), rather than one of our checkpoints."""
    return str(path).lower().endswith((SAFETENSORS_SUFFIX,) + TORCH_SUFFIXES)


def _read(path, use_ema: bool):
    """(state_dict of numpy, the key it came from or None, the file's training args or None)."""
    path = Path(path)
    name = path.name.lower()
    if not is_timm_file(name):
        raise UserError(
            f'{str(path)!r} has an unknown extension; give a {SAFETENSORS_SUFFIX} or '
            f'{" / ".join(TORCH_SUFFIXES)} timm weights file'
        )
    if path.is_dir():
        raise UserError(f'timm weights file {str(path)!r} is a folder; give the weights file itself')
    if not path.is_file():
        raise UserError(f'timm weights file {str(path)!r} does not exist')
    if name.endswith(SAFETENSORS_SUFFIX):
        try:
            contents = safetensors.numpy.load_file(path)
        except (safetensors.SafetensorError, OSError, ValueError, TypeError) as e:
            raise UserError(
                f'cannot read {str(path)!r} as {SAFETENSORS_SUFFIX} '
                f'({str(e).splitlines()[0] if str(e) else type(e).__name__}); check the file'
            ) from None
    else:
        contents = _torch_load(path)
    state_dict, key = _pick_state_dict(contents, use_ema, path)
    log.info('Loaded %s from %s', key or 'state_dict', path)
    train_args = contents.get('args') if key else None  # timm's CheckpointSaver keeps its argparse.Namespace
    return {_strip_prefixes(k): _to_numpy(v, k, path) for k, v in state_dict.items()}, key, train_args


def read_timm_checkpoint(path, model: str | None = None, num_classes: int | None = None, use_ema: bool = False):
    """(info, float32 {'params', 'batch_stats'} of numpy) of a timm weights file or training checkpoint, as timm's
    validate.py loads one: `model` (else the checkpoint's args.model) names the architecture; `num_classes`, when
    given, must match the classifier's. info: model, num_classes, weights ('ema' / 'raw'), args (the checkpoint's
    training args as a dict, {} when it has none)."""
    state_dict, key, train_args = _read(path, use_ema)
    args = dict(vars(train_args)) if train_args is not None and hasattr(train_args, '__dict__') else {}
    model = model or args.get('model')
    if not model:
        raise UserError(f'{str(path)!r} does not name its model; pass --model NAME (e.g. --model resnet50)')
    create_model(model, 1)  # an unknown name is one line here
    variables = to_flax(model, state_dict)
    found = convert.num_classes(model, state_dict)
    if num_classes is not None and num_classes != found:
        raise UserError(
            f'{str(path)!r} holds a classifier for {found} classes, not --num-classes {num_classes}; '
            f'pass --num-classes {found} or the matching weights'
        )
    weights = 'ema' if key in ('state_dict_ema', 'model_ema') else 'raw'
    info = dict(model=model, num_classes=found, weights=weights, args=args)
    return info, jax.tree.map(lambda x: x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, variables)


def save_timm_safetensors(state_dict: dict, path, metadata: dict | None = None) -> Path:
    """Write a state_dict (name -> array) as `.safetensors`, atomically (temporary file + rename); `metadata`
    (str -> str) joins the header's {'format': 'pt'}."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f'output {str(path)!r} is a folder; give a file name ending in {SAFETENSORS_SUFFIX}')
    arrays = {k: np.asarray(v, order='C') for k, v in state_dict.items()}  # keeps 0-d arrays 0-d
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp', delete=False) as f:
            tmp = f.name
        safetensors.numpy.save_file(arrays, tmp, metadata={'format': 'pt', **(metadata or {})})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the permissions of a plain open(), not mkstemp's 0600
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(
            f'cannot write {str(path)!r} ({e.strerror or e}); give a writable path in an existing folder'
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


def variables_from_checkpoint(step_dir, use_ema: bool = False, ema_index: int | None = None) -> tuple[dict, dict]:
    """(metadata, {'params', 'batch_stats'} of numpy) of one of our step folders: raw or EMA weights.

    A checkpoint of several EMAs holds them stacked; `use_ema` takes member `ema_index`, by default the
    one its metadata names best (`best_ema_index`). A given `ema_index` implies `use_ema`."""
    use_ema = use_ema or ema_index is not None
    metadata = checkpoint.read_metadata(step_dir)
    tree = checkpoint.restore_tree(step_dir)
    if use_ema:
        if metadata.get('ema') is None or tree.get('ema_params') is None:
            raise UserError(
                f'checkpoint {str(step_dir)!r} comes from a run without EMA (no --model-ema), so it '
                'has no EMA weights; leave out --use-ema (and --ema-index) to use its raw weights'
            )
        keys = checkpoint.EMA_KEYS
    else:
        keys = ('params', 'batch_stats')
    variables = {'params': tree[keys[0]], 'batch_stats': tree.get(keys[1]) or {}}
    if use_ema:
        index = checkpoint.pick_index(step_dir, metadata, ema_index)
        if checkpoint.saved_members(metadata) > 1:
            from jax_ema import ema

            variables = {k: ema.tree(v, index) for k, v in variables.items()}
        metadata = dict(metadata, ema_index=index)
    return metadata, jax.tree.map(np.asarray, variables)


def _shapes(tree) -> dict:
    return {
        '/'.join(k.key for k in path): tuple(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def load_initial_variables(path, model_name: str, num_classes: int, use_ema: bool = False, arch=None) -> dict:
    """timm weights file -> float32 {'params', 'batch_stats'} for `create_model(model_name, num_classes, **arch)`.

    What `--initial-checkpoint FILE [--initial-checkpoint-ema]` loads; a file of another model or with
    another number of classes raises UserError naming the key.
    """
    variables = to_flax(model_name, load_timm_state_dict(path, use_ema=use_ema), arch)
    model = create_model(model_name, num_classes, **arch_kwargs(arch))
    expected = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
        jax.ShapeDtypeStruct((1, 32, 32, in_chans(arch)), np.float32),
    )
    got = _shapes(variables)
    for name, shape in _shapes(expected).items():
        if got.get(name) != shape:  # to_flax checked the rest: only the classifier can differ
            raise UserError(
                f"{str(path)!r} was saved for another number of classes than this run's "
                f'{num_classes} ({name} has shape {got.get(name)}, the model {shape}); '
                'give the matching --num-classes'
            )
    return jax.tree.map(lambda x: x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, variables)
