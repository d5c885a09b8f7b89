"""Checkpoints: orbax, one folder per saved update count under `RUN/checkpoints/`.

Each step folder holds two items:
  state/     params, batch_stats, opt_state, step (+ ema_params, ema_batch_stats when EMA is on)
  metadata/  JSON: model, num_classes, img_size, ema settings, epoch, position, metrics, score
so no tool needs `--model` to read it. Orbax writes into a temporary folder and renames it when
complete, so a crash mid-save leaves the previous checkpoints intact; a save that fails (a full disk, a
read-only folder) removes its temporary folder and raises a UserError naming the intact previous one.
Which checkpoints are kept is decided from the `score` in their metadata (the latest plus the best N),
so it survives a resume. With several processes every process calls `save` and `restore_tree` (orbax
synchronises them; the folder must be shared).

Tools accept a run folder, its `checkpoints/` folder, one step folder, or `.../last` / `.../best`: finding
and reading one is checkpoint_read.py (`resolve`, `read_metadata`, `restore_tree`, importable from here too);
an OS failure under orbax in one line, orbax_errors.py. What a training run's checkpoint says about itself
(`run_metadata`) and how many EMAs it holds (`saved_members`, `check_members`, `pick_index`) are read and
written here too.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_ema import data_config, ema, faults, parallel, pretrained_cfgs
from jax_ema.checkpoint_read import (  # noqa: F401  (resolve, restore_tree: jax_ema.checkpoint's public API)
    read_metadata,
    resolve,
    restore_tree,
)
from jax_ema.errors import UserError
from jax_ema.guard import TrainingDiverged, is_finite_on_host
from jax_ema.orbax_errors import os_reason, quiet_orbax_aftermath

EMA_KEYS = ('ema_params', 'ema_batch_stats')
TMP_MARK = '.orbax-checkpoint-tmp'  # orbax's temporary step folders: <step>.orbax-checkpoint-tmp[-<time>]


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


class KeepLatestAndBest:
    """orbax preservation policy: the latest checkpoint and the `n` best by the `score` in our metadata
    (highest first, the earliest among equals, as `resolve(.../best)`); recovery checkpoints have no score.
    Reading the score from disk keeps the best of earlier sessions when a resumed run saves."""

    def __init__(self, directory: Path, n: int):
        self.directory, self.n = directory, n

    def should_preserve(self, checkpoints, *, context=None):
        steps = [int(c.step) for c in checkpoints]
        scores = {step: _score(self.directory / str(step)) for step in steps}
        ranked = sorted((step for step in steps if scores[step] is not None), key=lambda t: (-scores[t], t))
        keep = set(ranked[: self.n]) | {max(steps, default=None)}
        return [step in keep for step in steps]


def _score(step_dir: Path) -> float | None:
    try:
        return read_metadata(step_dir).get('score')
    except UserError:
        return None


class _StateHandler(ocp.StandardCheckpointHandler):
    """orbax's handler of the `state` item, with the `save:write` fault point once its writes have begun."""

    async def async_save(self, directory, *args, **kwargs):
        futures = await super().async_save(directory, *args, **kwargs)
        faults.hit('save:write', _saving_step.get())
        return futures


_saving_step = contextvars.ContextVar('saving_step', default=None)


def open_manager(directory, keep_best: int = 10) -> ocp.CheckpointManager:
    """A manager that keeps the `keep_best` best checkpoints by score plus the latest one (timm's
    --checkpoint-hist plus last; older recovery checkpoints, which have no score, are removed).
    Temporary folders of saves that died are removed first (by process 0, the run's one writer)."""
    directory = Path(directory).absolute()
    if jax.process_index() == 0 and directory.is_dir():
        for stale in directory.glob(f'*{TMP_MARK}*'):
            shutil.rmtree(stale, ignore_errors=True)
    registry = ocp.DefaultCheckpointHandlerRegistry()
    registry.add('state', ocp.args.StandardSave, _StateHandler())
    registry.add('metadata', ocp.args.JsonSave, ocp.JsonCheckpointHandler())
    options = ocp.CheckpointManagerOptions(
        preservation_policy=KeepLatestAndBest(directory, keep_best), enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(directory, options=options, handler_registry=registry)


def save(manager: ocp.CheckpointManager, state, metadata: dict, score: float | None = None) -> Path:
    """Write one checkpoint (atomically) keyed by the update count; returns its folder.

    `score` (higher is better) ranks end-of-epoch checkpoints; recovery checkpoints have none.
    A state with a NaN/Inf anywhere is never written: TrainingDiverged is raised instead.
    """
    return save_tree(manager, state_tree(state), metadata, score)


def save_tree(manager: ocp.CheckpointManager, tree: dict, metadata: dict, score: float | None = None) -> Path:
    """`save` for a state tree already in host numpy (the post-hoc EMA tool writes one without a TrainState).

    An OS failure of the write (a full disk, a read-only or vanished folder) leaves no partial folder and
    raises a UserError that names the previous checkpoint, intact (orbax renames a step folder only when complete).
    """
    step = int(tree['step'])
    if not is_finite_on_host(tree):
        raise TrainingDiverged(
            f'the weights became NaN/Inf by update {step}; nothing was saved (the last good '
            'checkpoint is kept). Lower --lr or check the data'
        )
    metadata = dict(metadata, score=score, step=step)
    directory = Path(manager.directory)
    previous = manager.latest_step()
    faults.hit('save:before', step)
    token = _saving_step.set(step)
    try:
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(tree), metadata=ocp.args.JsonSave(metadata)),
            force=True,
        )
        manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (orbax wraps OS errors in ValueError, RuntimeError...)
        reason = os_reason(e)
        if reason is None:
            raise
        quiet_orbax_aftermath()
        for partial in directory.glob(f'{step}{TMP_MARK}*'):
            shutil.rmtree(partial, ignore_errors=True)
        kept = (
            f'the previous checkpoint {str(directory / str(previous))!r} is intact'
            if previous is not None
            else 'no earlier checkpoint of this run exists'
        )
        hint = 'free some space' if 'space' in reason or 'quota' in reason else 'make it writable'
        raise UserError(
            f'cannot save checkpoint {step} in {str(directory)!r} ({reason}); {kept}: {hint}, then '
            f'resume with --resume {str(directory.parent)!r}'
        ) from None
    finally:
        _saving_step.reset(token)
    faults.hit('save:after-checkpoint', step)
    return directory / str(step)


def update_metadata(step_dir, changes: dict) -> dict:
    """Rewrite a saved checkpoint's metadata with `changes` (a temporary file renamed over it: atomic)."""
    path = Path(step_dir) / 'metadata' / 'metadata'
    metadata = dict(read_metadata(step_dir), **changes)
    tmp = Path(step_dir) / '.metadata.tmp'
    tmp.write_text(json.dumps(metadata))
    os.replace(tmp, path)
    return metadata


def record_validation(manager: ocp.CheckpointManager, step_dir, metadata: dict, score: float) -> Path:
    """Give an existing checkpoint (saved at an epoch's last update by a run stopped before validating)
    the validation done since: its metadata and score, as the epoch-end save would have written them."""
    if jax.process_index() == 0:
        update_metadata(step_dir, dict(metadata, score=score, step=int(Path(step_dir).name)))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('jax_ema.checkpoint.record_validation')
    manager.reload()
    return Path(step_dir)


# ---------------------------------------------------------------- what a checkpoint says about its run


def run_metadata(config, num_classes: int, ema_cfg, epoch: int, position: int, metrics=None) -> dict:
    """The metadata a training run's checkpoint carries (`config` a config.Config); `position` = updates done
    within `epoch`. `data_config` (timm's keys) lets validate and export use the run's; `pretrained` names
    the weights the run started from (hub repo or file; None from scratch or --initial-checkpoint)."""
    hub = pretrained_cfgs.lookup(config.model)
    pretrained = (config.pretrained_path or (hub.hub_id if hub else None)) if config.pretrained else None
    from jax_ema.models import arch_kwargs, model_kwargs

    arch = arch_kwargs(model_kwargs(config))
    return dict(
        model=config.model,
        num_classes=num_classes,
        **({'model_kwargs': arch} if arch else {}),  # --gp, --in-chans, --model-kwargs ...: evaluation rebuilds it
        img_size=config.img_size,
        opt=config.opt,
        ema=dataclasses.asdict(ema_cfg) if ema_cfg else None,
        host_ema=config.model_ema_force_cpu,
        epoch=epoch,
        position=position,
        metrics=metrics,
        loss_scale=bool(config.amp and config.amp_dtype == 'float16'),
        data_config=data_config.to_json(config.data_config),
        pretrained=None if config.initial_checkpoint else pretrained,
    )


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
        raise UserError(
            f'checkpoint {str(step_dir)!r} holds {saved} EMA(s) but this run keeps {members}; resume '
            'with the same --model-ema-decay and --model-ema-std values it was trained with'
        )


def pick_index(step_dir, metadata: dict, ema_index: int | None) -> int:
    """The member `--use-ema` / `--ema-index i` means in a checkpoint: i, else the metadata's
    `best_ema_index` (the winner at that epoch), else 0; UserError for an index it does not hold."""
    members = max(saved_members(metadata), 1)
    if ema_index is None:
        return int(metadata.get('best_ema_index') or 0) if members > 1 else 0
    if not 0 <= ema_index < members:
        raise UserError(
            f'--ema-index {ema_index} is out of range: checkpoint {str(step_dir)!r} holds {members} '
            f'EMA(s), indices 0..{members - 1}'
        )
    return int(ema_index)
