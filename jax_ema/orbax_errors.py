"""orbax's failures in one line: the OS error behind a failed save or restore (`os_reason`), and the noise
orbax and TensorStore print around it (a writer thread's echoed traceback, 'Event loop is closed') dropped."""

import logging
import os
import re
import sys


def os_reason(error: BaseException) -> str | None:
    """The OS error behind `error` in words ('No space left on device'), None when it is not an OS error.
    orbax and TensorStore report them as ValueError('... [os_error_code=\'28\']') or chain the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno)
        code = re.search(r"os_error_code='?(\d+)", str(error))
        if code:
            return os.strerror(int(code.group(1)))
        error = error.__cause__ or error.__context__
    return None


class _DropOrbaxThreadEcho(logging.Filter):
    """orbax logs each failed writer thread's exception (with its traceback) before re-raising it to the caller,
    which reports it in one line: the echo is noise."""

    def filter(self, record):
        return '_SignalingThread.run() raised an exception' not in record.getMessage()


logging.getLogger('absl').addFilter(_DropOrbaxThreadEcho())


class _DropUnretrievedFutures(logging.Filter):
    """A failed restore raises the first array's error; the other arrays' reads that failed too are futures
    nobody awaits, and asyncio logs each ('Future exception was never retrieved') whenever it is collected."""

    def filter(self, record):
        return not record.getMessage().startswith(('Future exception was never retrieved', 'Task exception was'))


def quiet_orbax_aftermath() -> None:
    """After a failed save or restore, TensorStore's writes still in flight complete into orbax's closed event
    loop, each printing 'RuntimeError: Event loop is closed' with a traceback, and asyncio logs the failed reads
    nobody awaited: drop those (and only those)."""
    asyncio_log = logging.getLogger('asyncio')
    if not any(isinstance(f, _DropUnretrievedFutures) for f in asyncio_log.filters):
        asyncio_log.addFilter(_DropUnretrievedFutures())
    hook = sys.unraisablehook
    if getattr(hook, 'drops_closed_loops', False):
        return

    def drop_closed_loops(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == 'Event loop is closed':
            return
        hook(unraisable)

    drop_closed_loops.drops_closed_loops = True
    sys.unraisablehook = drop_closed_loops
