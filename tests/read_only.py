"""Read-only folders for the tests, as a read-only mount behaves for Python code: every write under them fails
with OSError(EROFS). Done with a Python audit hook, because root ignores file permissions and a read-only
mount needs privileges a CI runner may not have. Writes from C++ (TensorStore's) are not seen: the trainer's
first write into a run folder is its lock file, from Python, so that is where a read-only folder is met."""

import contextlib
import errno
import os
import sys

_GUARDED: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITE_EVENTS = {
    'os.mkdir': 1,
    'os.rename': 2,
    'os.remove': 1,
    'os.rmdir': 1,
    'os.truncate': 1,
    'os.chmod': 1,
    'os.utime': 1,
    'os.link': 2,
    'os.symlink': 2,
    'shutil.rmtree': 1,
}  # how many path arguments


def _inside(path) -> bool:
    if isinstance(path, int) or path is None:
        return False
    path = os.path.abspath(os.fsdecode(path))
    return any(path == root or path.startswith(root + os.sep) for root in _GUARDED)


def _audit(event, args):
    if not _GUARDED:
        return
    if event == 'open':
        paths = [args[0]] if args[2] is not None and args[2] & _WRITE_FLAGS else []
    else:
        paths = args[: _WRITE_EVENTS.get(event, 0)]
    for path in paths:
        if _inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))


sys.addaudithook(_audit)


@contextlib.contextmanager
def read_only(*folders):
    """Writes under `folders` fail with EROFS inside this block."""
    roots = [os.path.abspath(f) for f in folders]
    _GUARDED.extend(roots)
    try:
        yield
    finally:
        for root in roots:
            _GUARDED.remove(root)
