"""Run guards: SIGTERM / Ctrl-C become a checkpoint at the next step boundary; non-finite state stops the run."""

from __future__ import annotations

import signal

import jax
import numpy as np

from jax_ema.errors import UserError


class TrainingDiverged(UserError):
    """The loss or the weights became NaN/Inf; nothing non-finite was saved."""


class Preemption:
    """Catches SIGTERM and SIGINT while active; `requested` is then True until the run saves and exits.

    With several processes, `agreed()` makes every process see the request at the same step.
    """

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """True on every process once any process was signalled (a collective when several run)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags))


def is_finite_on_host(host_tree) -> bool:
    """Whether every float leaf of a host (numpy) tree is finite."""
    return all(
        np.all(np.isfinite(x)) for x in jax.tree.leaves(host_tree) if np.issubdtype(np.asarray(x).dtype, np.inexact)
    )
