"""Runs one bad-input case (tests/test_bad_input.py) and lists what is wrong with its answer."""

import contextlib
import io
import os
import shutil
import traceback
from pathlib import Path

from cli_output import log_lines
from jax_ema import export, plot, posthoc, train, validate
from read_only import read_only

CLIS = {
    'train': train.main,
    'export': export.main,
    'validate': validate.main,
    'posthoc': posthoc.main,
    'plot': plot.main,
}


def _snapshot(root: Path) -> dict:
    """Every path under root with its size and modification time (folders: None, mtime)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob('*')
    }


def check_case(w, cli: str, build, expected: str) -> tuple[int, str, list[str]]:
    """Runs one case from w.cwd; (exit code, stderr, what is wrong with the answer: [] when all is well).

    Anything the call created is removed afterwards, so one failing case cannot spoil the next.
    """
    traced = []
    real_train_step = train.train_step

    def watched_train_step(*args, **kwargs):
        traced.append(True)
        return real_train_step(*args, **kwargs)

    argv = build(w)
    before = _snapshot(w.root)
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(w.cwd)
    train.train_step = watched_train_step
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            read_only(*w.read_only),
            log_lines() as logged,
        ):
            try:
                code = CLIS[cli](argv)
            except Exception:  # pylint: disable=broad-except  # what `python -m` would print, exit 1
                traceback.print_exc()
                code = 1
    finally:
        train.train_step = real_train_step
        os.chdir(here)
    after = _snapshot(w.root)
    created = sorted(set(after) - set(before))
    for rel in created:  # top-most first: a removed folder takes its contents along
        path = w.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    err = err.getvalue()
    lines = err.strip().splitlines()
    problems = []
    if code != 2:
        problems.append(f'exit code {code}, not 2')
    if 'Traceback' in err:
        problems.append('a traceback on stderr')
    logged = [line for message in logged for line in message.splitlines()]
    if lines[:-1] != logged or not lines or not lines[-1].startswith('error: '):
        problems.append(f'{len(lines)} lines on stderr, not the log and one "error: ..." line')
    if expected not in err:
        problems.append(f'{expected!r} not in the message')
    if traced:
        problems.append('a train step was traced: the bad input was not caught before training')
    if created:
        tops = [rel for rel in created if str(Path(rel).parent) not in created]
        problems.append(f'created {", ".join(tops)}')
    changed = sorted(
        rel
        for rel in before  # a folder's mtime moves with what was created in it
        if rel not in after or (before[rel][0] is not None and after[rel] != before[rel])
    )
    if changed:
        problems.append(f'changed or removed {", ".join(changed)}')
    return code, err, problems
