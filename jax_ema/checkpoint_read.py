"""Finding and reading a saved checkpoint: a run folder, its `checkpoints/` folder, one step folder, or
`.../last` / `.../best` -> one step folder (`resolve`); its metadata (`read_metadata`) and its state tree
(`restore_tree`), with a UserError in one line for a folder that is missing, incomplete, damaged or not ours.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_ema.errors import UserError
from jax_ema.orbax_errors import quiet_orbax_aftermath

# What orbax / TensorStore say when a checkpoint's files are cut short or missing (kept apart from a tree mismatch)
DAMAGED = ('OUT_OF_RANGE', 'DATA_LOSS', 'NOT_FOUND', 'does not exist', 'Unterminated', 'Expecting')


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    return sorted(
        (p for p in ckpt_dir.iterdir() if p.name.isdigit() and (p / 'metadata').exists()), key=lambda p: int(p.name)
    )


def resolve(path) -> Path:
    """Run folder / checkpoints folder / step folder / `.../last` / `.../best` -> one step folder."""
    path = Path(path)
    name = 'last'
    if path.name in ('last', 'best') and not path.exists():
        name, path = path.name, path.parent
    if (path / 'state').is_dir() and (path / 'metadata').exists():
        return path
    if path.is_file():
        raise UserError(
            f'checkpoint {str(path)!r} is a file; give a run folder, its checkpoints/ folder or one step folder'
        )
    ckpt_dir = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
    if not ckpt_dir.is_dir():
        raise UserError(
            f'checkpoint {str(path)!r} does not exist; give a run folder, its checkpoints/ folder or one step folder'
        )
    steps = _step_dirs(ckpt_dir)
    if not steps and _foreign(ckpt_dir):
        raise UserError(
            f"{str(path)!r} holds an orbax checkpoint of another program, not one of jax_ema's (a step "
            'folder with state/ and metadata/); give a folder written by python -m jax_ema.train'
        )
    if not steps and (ckpt_dir.parent / 'args.yaml').exists():  # a run killed (or still) before its first save
        raise UserError(
            f'no complete checkpoint in {str(ckpt_dir)!r} yet: its run stopped (or is still) before its first save, '
            'at the end of epoch 0 (or after --recovery-interval updates); nothing to go on from, so start it again '
            'without --resume'
        )
    if not steps:
        raise UserError(
            f'no complete checkpoint in {str(ckpt_dir)!r}; give a run folder that has saved at least one epoch'
        )
    if name == 'last':
        return steps[-1]
    scored = [p for p in steps if read_metadata(p).get('score') is not None]
    if not scored:
        raise UserError(f'no end-of-epoch checkpoint in {str(ckpt_dir)!r} to call best; use last')
    return max(scored, key=lambda p: (read_metadata(p)['score'], -int(p.name)))  # ties: the earliest, as timm


def _foreign(folder: Path) -> bool:
    """Whether `folder` is an orbax checkpoint (or a manager's folder of them) laid out as no jax_ema one is."""

    def other_step(step: Path) -> bool:  # a manager's step folder without our `state` item
        return (step / '_CHECKPOINT_METADATA').exists() and not (step / 'state').exists()

    return (
        (folder / '_METADATA').exists()
        or other_step(folder)
        or any(other_step(p) for p in folder.iterdir() if p.name.isdigit())
    )


def read_metadata(step_dir) -> dict:
    step_dir = Path(step_dir)
    files = (
        [p for p in (step_dir / 'metadata').rglob('*') if p.is_file()]
        if (step_dir / 'metadata').is_dir()
        else [step_dir / 'metadata']
    )
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
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, 'dtype', None) or np.asarray(x).dtype), target
            )
            return ckptr.restore(step_dir / 'state', abstract)
        except (ValueError, KeyError, OSError) as e:
            quiet_orbax_aftermath()
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if 'mismatch' in reason.lower() or isinstance(e, KeyError):
                reason = (
                    'its saved arrays do not fit this run (another --model, class count or --opt?); use '
                    'the settings it was trained with, or --no-resume-opt for another optimizer'
                )
            elif any(sign in reason for sign in DAMAGED):
                code, array = re.match(r'[A-Z_]+', reason), re.search(r'"([^"/]+)/', reason)
                detail = f'{code.group(0)} reading {array.group(1)}' if code and array else reason[:80]
                reason = (
                    f'its files are incomplete or damaged ({detail}); use another checkpoint of the run '
                    '(RUN/checkpoints/<step>)'
                )
            raise UserError(f'cannot restore {str(step_dir)!r}: {reason[:300]}') from None
