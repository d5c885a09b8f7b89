"""Checkpoints: orbax, one folder per saved update count under `RUN/checkpoints/`.

Each step folder holds two items:
  state/     params, batch_stats, opt_state, step (+ ema_params, ema_batch_stats when EMA is on)
  metadata/  JSON: model, num_classes, img_size, ema settings, epoch, position, metrics, score
so no tool needs `--model` to read it. Orbax writes into a temporary folder and renames it when
complete, so a crash mid-save leaves the previous checkpoints intact. With several processes every
process calls `save` and `restore_tree` (orbax synchronises them; the folder must be shared).

Tools accept a run folder, its `checkpoints/` folder, one step folder, or `.../last` / `.../best`.
What a training run's checkpoint says about itself (`run_metadata`) and how many EMAs it holds
(`saved_members`, `check_members`, `pick_index`) are read and written here too.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jax_ema import data_config, ema, parallel, pretrained_cfgs
from jax_ema.errors import UserError
from jax_ema.guard import TrainingDiverged, is_finite_on_host

EMA_KEYS = ('ema_params', 'ema_batch_stats')


def state_tree(state) -> dict:
    """The arrays of a TrainState worth saving, as host numpy (EMA keys only when EMA is on, the loss
    scale only with float16 --amp); a sharded EMA is gathered first, so every process holds the whole tree."""
    tree = dict(step=state.step, params=state.params, batch_stats=state.batch_stats, opt_state=state.opt_state)
    if state.ema_params is not None:
        tree.update(ema_params=state.ema_params, ema_batch_stats=state.ema_batch_stats)
    if getattr(state, 'loss_scale', None) is not None:  # float16 --amp: timm saves its GradScaler too
        tree.update(loss_scale=dict(scale=state.loss_scale.scale, growth_tracker=state.loss_scale.growth_tracker))
    tree = jax.device_get(parallel.gather(tree))
    for key in EMA_KEYS:  # saved as ordinary pytrees, whatever the EMA's in-memory layout
        if key in tree:
            tree[key] = ema.tree(tree[key])
    return tree


def open_manager(directory, keep_best: int = 10) -> ocp.CheckpointManager:
    """A manager that keeps the `keep_best` best checkpoints by score plus the latest one (timm's
    --checkpoint-hist plus last; older recovery checkpoints, which have no score, are removed)."""
    keep = policies.AnyPreservationPolicy([
        policies.LatestN(1),
        policies.BestN(get_metric_fn=lambda m: m['score'], reverse=False, n=keep_best,  # keeps the highest
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=keep, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, state, metadata: dict, score: float | None = None) -> Path:
    """Write one checkpoint (atomically) keyed by the update count; returns its folder.

    `score` (higher is better) ranks end-of-epoch checkpoints; recovery checkpoints have none.
    A state with a NaN/Inf anywhere is never written: TrainingDiverged is raised instead.
    """
    return save_tree(manager, state_tree(state), metadata, score)


def save_tree(manager: ocp.CheckpointManager, tree: dict, metadata: dict, score: float | None = None) -> Path:
    """`save` for a state tree already in host numpy (the post-hoc EMA tool writes one without a TrainState)."""
    step = int(tree['step'])
    if not is_finite_on_host(tree):
        raise TrainingDiverged(f'the weights became NaN/Inf by update {step}; nothing was saved (the last good '
                               'checkpoint is kept). Lower --lr or check the data')
    metadata = dict(metadata, score=score, step=step)
    metrics = None if score is None else {'score': float(score)}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                               metadata=ocp.args.JsonSave(metadata)),
                 metrics=metrics, force=True)
    manager.wait_until_finished()
    return Path(manager.directory) / str(step)


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    return sorted((p for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / 'metadata').exists()),
                  key=lambda p: int(p.name))


def resolve(path) -> Path:
    """Run folder / checkpoints folder / step folder / `.../last` / `.../best` -> one step folder."""
    path = Path(path)
    name = 'last'
    if path.name in ('last', 'best') and not path.exists():
        name, path = path.name, path.parent
    if (path / 'state').is_dir() and (path / 'metadata').exists():
        return path
    if path.is_file():
        raise UserError(f'checkpoint {str(path)!r} is a file; give a run folder, its checkpoints/ folder or '
                        'one step folder')
    ckpt_dir = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
    if not ckpt_dir.is_dir():
        raise UserError(f'checkpoint {str(path)!r} does not exist; give a run folder, its checkpoints/ '
                        'folder or one step folder')
    steps = _step_dirs(ckpt_dir)
    if not steps:
        raise UserError(f'no complete checkpoint in {str(ckpt_dir)!r}; give a run folder that has saved '
                        'at least one epoch')
    if name == 'last':
        return steps[-1]
    scored = [p for p in steps if read_metadata(p).get('score') is not None]
    if not scored:
        raise UserError(f'no end-of-epoch checkpoint in {str(ckpt_dir)!r} to call best; use last')
    return max(scored, key=lambda p: (read_metadata(p)['score'], -int(p.name)))  # ties: the earliest, as timm


def read_metadata(step_dir) -> dict:
    step_dir = Path(step_dir)
    files = [p for p in (step_dir / 'metadata').rglob('*') if p.is_file()] if (step_dir / 'metadata').is_dir() \
        else [step_dir / 'metadata']
    for f in files:
        try:
            metadata = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError, OSError):
            continue
        if isinstance(metadata, dict):
            return metadata
    raise UserError(f'checkpoint {str(step_dir)!r} has no readable metadata; it is incomplete or not ours')


def restore_tree(step_dir, target: dict | None = None) -> dict:
    """The saved state tree (numpy). With `target` (a tree of arrays) the structure is taken from it."""
    step_dir = Path(step_dir).absolute()
    with ocp.StandardCheckpointer() as ckptr:
        try:
            if target is None:
                return ckptr.restore(step_dir / 'state')
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, 'dtype', None)
                                                                         or np.asarray(x).dtype), target)
            return ckptr.restore(step_dir / 'state', abstract)
        except (ValueError, KeyError, FileNotFoundError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if 'mismatch' in reason.lower() or isinstance(e, KeyError):
                reason = ("its saved arrays do not fit this run (another --model, class count or --opt?); use "
                          "the settings it was trained with, or --no-resume-opt for another optimizer")
            raise UserError(f'cannot restore {str(step_dir)!r}: {reason[:300]}') from None


# ---------------------------------------------------------------- what a checkpoint says about its run

def run_metadata(config, num_classes: int, ema_cfg, epoch: int, position: int, metrics=None) -> dict:
    """The metadata a training run's checkpoint carries (`config` a config.Config); `position` = updates done
    within `epoch`. `data_config` (timm's keys) lets validate and export use the run's; `pretrained` names
    the weights the run started from (hub repo or file; None from scratch or --initial-checkpoint)."""
    hub = pretrained_cfgs.lookup(config.model)
    pretrained = (config.pretrained_path or (hub.hub_id if hub else None)) if config.pretrained else None
    return dict(model=config.model, num_classes=num_classes, img_size=config.img_size, opt=config.opt,
                ema=dataclasses.asdict(ema_cfg) if ema_cfg else None, host_ema=config.model_ema_force_cpu,
                epoch=epoch, position=position, metrics=metrics,
                loss_scale=bool(config.amp and config.amp_dtype == 'float16'),
                data_config=data_config.to_json(config.data_config),
                pretrained=None if config.initial_checkpoint else pretrained)


def saved_members(metadata: dict) -> int:
    """How many EMAs a checkpoint holds: 0 without EMA, 1 for a single (or post-hoc) EMA."""
    saved = metadata.get('ema')
    if not saved:
        return 0
    return 1 + len(saved.get('extra_decays') or ()) + len(saved.get('stds') or ())


def stacked_target(tree, members: int):
    """Shapes of `tree` saved as a stack: float leaves get a leading member axis (float32, the EMA dtype)."""
    def leaf(x):
        dtype = np.dtype(getattr(x, 'dtype', np.float32))
        if np.issubdtype(dtype, np.floating):
            return jax.ShapeDtypeStruct((members, *np.shape(x)), ema.ema_dtype())
        return jax.ShapeDtypeStruct(np.shape(x), dtype)
    return jax.tree.map(leaf, tree)


def check_members(step_dir, metadata: dict, members: int) -> None:
    """UserError when a checkpoint's EMA stack has another height than this run's."""
    saved = saved_members(metadata)
    if saved and saved != members:
        raise UserError(f'checkpoint {str(step_dir)!r} holds {saved} EMA(s) but this run keeps {members}; resume '
                        'with the same --model-ema-decay and --model-ema-std values it was trained with')


def pick_index(step_dir, metadata: dict, ema_index: int | None) -> int:
    """The member `--use-ema` / `--ema-index i` means in a checkpoint: i, else the metadata's
    `best_ema_index` (the winner at that epoch), else 0; UserError for an index it does not hold."""
    members = max(saved_members(metadata), 1)
    if ema_index is None:
        return int(metadata.get('best_ema_index') or 0) if members > 1 else 0
    if not 0 <= ema_index < members:
        raise UserError(f'--ema-index {ema_index} is out of range: checkpoint {str(step_dir)!r} holds {members} '
                        f'EMA(s), indices 0..{members - 1}')
    return int(ema_index)
