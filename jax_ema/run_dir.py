"""The run folder: which one a run writes (a new one, or the one it resumes) and its one writer (a lock).

Where a run writes:
  * a new run: `--output/--experiment` (default `./output/train/<date>-<model>-<img-size>`), never reusing a
    folder (timm's -N suffix);
  * `--resume` with `--experiment X`: `--output/X`, going on in it when X is the resumed run's folder, else a new
    folder, the resumed run left untouched;
  * `--resume` without `--experiment`: the run folder of its latest checkpoint goes on (timm would start a new
    dated folder); an older checkpoint of it is refused (going on there would mix two histories).
One writer: process 0 holds `flock` on RUN/.lock for the whole run, with its pid, host and start time written
in it; the kernel releases it when the process ends, however it ends, so a lock is never stale.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from jax_ema import checkpoint, reporting
from jax_ema.errors import UserError

LOCK = '.lock'


def source_run(step_dir: Path) -> Path | None:
    """The run folder a step folder belongs to (RUN of RUN/checkpoints/<step>), None for a bare step folder."""
    return step_dir.parent.parent if step_dir.parent.name == 'checkpoints' else None


def choose(output: str, experiment: str, model: str, img_size: int, resumed: Path | None) -> Path:
    """The run folder of a run resuming `resumed` (a step folder; None for a new run); a new one is created here."""
    source = source_run(resumed) if resumed is not None else None
    if resumed is None or (source is None and not experiment):
        return reporting.make_run_dir(output, experiment, model, img_size)
    if experiment:
        target = (Path(output) if output else Path('output') / 'train') / experiment
        if source is None or not target.exists() or not _same(target, source):
            return reporting.make_run_dir(output, experiment, model, img_size)
    latest = checkpoint.resolve(source)
    if not _same(latest, resumed):
        raise UserError(
            f'--resume {str(resumed)!r} is not the latest checkpoint of its run (that is update '
            f'{latest.name}); going on from it in {str(source)!r} would mix two histories, so add '
            '--experiment NAME to continue it in a new run folder (--output/NAME)'
        )
    return source


def claim(run_dir, output: str, experiment: str, model: str, img_size: int, resumed: Path | None):
    """(run folder, its RunLock) of process 0: `run_dir` when given, else `choose`'s; checks, once the lock is
    held, that a resumed run's folder has not gone on meanwhile."""
    run_dir = Path(run_dir) if run_dir is not None else choose(output, experiment, model, img_size, resumed)
    lock = RunLock(run_dir)
    if resumed is not None and goes_on(run_dir, resumed):
        try:
            check_still_latest(run_dir, resumed)
        except UserError:
            lock.release()
            raise
    return run_dir, lock


def goes_on(run_dir, resumed: Path) -> bool:
    """Whether a run resumed from the step folder `resumed` writes in that checkpoint's own run folder."""
    source = source_run(resumed)
    return source is not None and _same(run_dir, source)


def check_still_latest(run_dir: Path, resumed: Path) -> None:
    """UserError when another process saved a newer checkpoint in `run_dir` while this one was starting."""
    latest = checkpoint.resolve(run_dir)
    if not _same(latest, resumed):
        raise UserError(
            f'run folder {str(run_dir)!r} went on to update {latest.name} while this run was starting '
            f'from update {resumed.name}; resume again to go on from its latest checkpoint'
        )


def _same(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class RunLock:
    """An exclusive `flock` on RUN/.lock, held until `release()` (or until the process ends)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(_unwritable(run_dir, e)) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(self._fd)
            os.close(self._fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(
                    f'cannot lock run folder {str(run_dir)!r} ({e.strerror}); use a folder on a '
                    'file system that supports flock'
                ) from None
            raise UserError(
                f'run folder {str(run_dir)!r} is in use by another trainer ({holder}); wait for it '
                'to end or stop it, or resume into a new folder with --experiment NAME'
            ) from None
        self.holder = dict(
            pid=os.getpid(), host=socket.gethostname(), started=datetime.datetime.now().strftime('%Y-%m-%d %H:%M:%S')
        )
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, (json.dumps(self.holder) + '\n').encode())
            os.fsync(self._fd)
        except OSError as e:
            self.release()
            raise UserError(_unwritable(run_dir, e)) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
        return f'pid {holder["pid"]} on host {holder["host"]}, started {holder["started"]}'
    except (OSError, ValueError, KeyError, TypeError):
        return 'holder unknown: it is starting'


def _unwritable(run_dir, e: OSError) -> str:
    return (
        f'cannot write in run folder {str(run_dir)!r} ({e.strerror}); it is read-only here, so resume it into '
        'a writable folder with --output DIR --experiment NAME (the run itself is only read)'
    )
