"""Several EMAs in one run (`--model-ema-decay D0 D1 ...`, `--model-ema-std S ...`): the trainer's side.

The stack itself (one [members, n] FlatTree, one fused update) is ema.py's; here is what the trainer
does with it: restore a stack from a checkpoint, validate every member, pick the best one (for the
checkpoint score, its metadata's `best_ema_index` and results.json), and the snapshot schedule.
Member 0 is the first decay; with a single EMA nothing here changes what the trainer did before.
"""
from __future__ import annotations

import logging

import jax
import numpy as np

from jax_ema import ema, posthoc
from jax_ema.errors import UserError

log = logging.getLogger('jax_ema.train')

METRIC_KEYS = ('loss', 'top1', 'top5')


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


def evaluate_members(evaluate_one, ema_params, ema_stats, on_host: bool, names) -> list[dict]:
    """`evaluate_one(params, stats)` of every member (one jitted eval serves all: same [n] shapes), logged
    by `names`. A host stack is read to host numpy once; each member goes to the device for its evaluation."""
    if on_host:
        ema_params, ema_stats = jax.device_get((ema_params, ema_stats))
    results = []
    for i, name in enumerate(names):
        m = evaluate_one(ema.member(ema_params, i), ema.member(ema_stats, i))
        log.info('Test (EMA %s): Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f', name, m['loss'], m['top1'], m['top5'])
        results.append(m)
    return results


def best_index(member_metrics: list[dict], score) -> int:
    """The member with the highest `score(metrics)`; ties go to the lower index."""
    scores = [score(m) for m in member_metrics]
    return int(np.argmax(scores))


def column_prefixes(members: int) -> list[str]:
    """summary.csv prefixes of the members: 'ema' (member 0), then 'ema1', 'ema2', ..."""
    return ['ema'] + [f'ema{i}' for i in range(1, members)]


def best_over_rows(rows: list[dict], members: int, score) -> tuple[float, int, int]:
    """(best score, its epoch, its member) over every epoch and member of summary.csv rows; ties: the
    earliest epoch, then the lower member."""
    best = None
    for row in rows:
        for i, prefix in enumerate(column_prefixes(members)):
            value = score({k: float(row[f'{prefix}_eval_{k}']) for k in METRIC_KEYS})
            key = (value, -int(row['epoch']), -i)
            best = key if best is None or key > best else best
    return best[0], -best[1], -best[2]


def describe(cfg: ema.EmaConfig, index: int) -> dict:
    """{'index': i, 'decay': d} or {'index': i, 'std': s} for member `index`."""
    if index < len(cfg.decays):
        return {'index': index, 'decay': cfg.decays[index]}
    return {'index': index, 'std': cfg.stds[index - len(cfg.decays)]}


def snapshot_due(count: int, every: int, total: int) -> bool:
    """Snapshots every `every` updates and at the run's last update."""
    return bool(every) and (count % every == 0 or count == total)


def save_snapshot(run_dir, count: int, cfg: ema.EmaConfig, state, dtype: str) -> None:
    """posthoc.save_snapshot of the state's stack, by process 0 only (pending updates flushed by the caller)."""
    if jax.process_index() == 0:
        posthoc.save_snapshot(run_dir, count, cfg, state.ema_params, state.ema_batch_stats, dtype)


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
