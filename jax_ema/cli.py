"""What every CLI shares: logging set-up and bad input answered with one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from jax_ema.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UserError (one line) instead of printing usage and exiting."""

    def error(self, message):
        raise UserError(f'{message}; see --help')


class TimmFormatter(logging.Formatter):
    """timm's console format: an INFO record is its message alone, others `LEVEL: message`."""

    def format(self, record):
        if record.levelno == logging.INFO:
            return record.getMessage()
        return f'{record.levelname}: {record.getMessage()}'


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record comes (a CLI called in-process, under capture)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def setup_logging() -> None:
    """Log INFO and above to stderr as timm's `setup_default_logging` (its `Train:`/`Test:` lines included);
    stdout keeps what a script reads: `--result` and its JSON."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    handler = _Stderr()
    handler.setFormatter(TimmFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ('absl', 'orbax', 'jax', 'tensorflow', 'matplotlib', 'PIL'):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(fn) -> int:
    """Run `fn()`; a UserError becomes `error: <message>` on stderr and exit code 2 (no traceback)."""
    setup_logging()
    try:
        return fn() or 0
    except UserError as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        return 2
    except OSError as e:  # a file system fault no check foresaw (a full disk, a read-only or vanished folder)
        where = f' {e.filename!r}' if e.filename else ''
        print(
            f'error: cannot access{where} ({e.strerror or e}); fix the file system (space, permissions), then '
            'run again (a training run resumes from its last checkpoint with --resume RUN)',
            file=sys.stderr,
            flush=True,
        )
        return 2
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr, flush=True)
        return 130
