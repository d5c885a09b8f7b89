"""Fault injection at named points: how the tests kill, signal or fill the disk at a known moment, never by timing.

    JAX_EMA_FAULT="POINT[@STEP]:ACTION[,POINT[@STEP]:ACTION ...]"     e.g. save:write@5:ENOSPC, update@7:KILL

POINT (STEP: the update count at which the point is reached; without @STEP: whenever it is reached):
  update                      after each optimizer update
  epoch-end:before-validate   an epoch's updates done, before its validation
  save:before                 a checkpoint save begins (nothing written yet)
  save:write                  orbax has started writing the checkpoint's arrays (its temporary folder exists)
  save:after-checkpoint       the checkpoint is complete; summary.csv not yet written
  save:after-summary          summary.csv holds the epoch's row; the plot and results.json not yet written
ACTION: KILL, TERM, INT (that signal, sent to this process) or ENOSPC, EROFS, EACCES (an OSError with that errno).

The older JAX_EMA_FAULT_SIGNAL_AT_UPDATE="N:SIG" means "update@N:SIG". Unset, `hit` costs one dict lookup.
"""

from __future__ import annotations

import errno
import functools
import os
import signal

FAULT = 'JAX_EMA_FAULT'
SIGNAL_AT_UPDATE = 'JAX_EMA_FAULT_SIGNAL_AT_UPDATE'
POINTS = (
    'update',
    'epoch-end:before-validate',
    'save:before',
    'save:write',
    'save:after-checkpoint',
    'save:after-summary',
)
SIGNALS = ('KILL', 'TERM', 'INT')
ERRNOS = ('ENOSPC', 'EROFS', 'EACCES')


@functools.lru_cache(maxsize=8)
def _parse(spec: str, legacy: str) -> tuple:
    """((point, step or None, action), ...) of the two variables' values; ValueError for a spec that could
    never fire."""
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(','))):
        where, _, action = item.rpartition(':')
        point, _, step = where.partition('@')
        if point not in POINTS or action not in SIGNALS + ERRNOS or (step and not step.isdigit()):
            raise ValueError(
                f'{FAULT}={spec!r}: {item!r} is not POINT[@STEP]:ACTION with POINT one of '
                f'{", ".join(POINTS)} and ACTION one of {", ".join(SIGNALS + ERRNOS)}'
            )
        faults.append((point, int(step) if step else None, action))
    if legacy:
        step, _, action = legacy.partition(':')
        faults.append(('update', int(step), action))
    return tuple(faults)


def hit(point: str, step: int | None = None) -> None:
    """Reached `point` (at update count `step`): do what JAX_EMA_FAULT asks there, if anything."""
    spec, legacy = os.environ.get(FAULT, ''), os.environ.get(SIGNAL_AT_UPDATE, '')
    if not spec and not legacy:
        return
    for name, at, action in _parse(spec, legacy):
        if name != point or (at is not None and at != step):
            continue
        if action in SIGNALS:
            os.kill(os.getpid(), getattr(signal, f'SIG{action}'))
        else:
            code = getattr(errno, action)
            raise OSError(code, os.strerror(code))
