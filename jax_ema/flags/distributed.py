"""Distributed parameters: several processes (parallel.initialize)."""

from __future__ import annotations

import dataclasses

from jax_ema.flags import flag, non_negative, positive


@dataclasses.dataclass(frozen=True)
class DistributedFlags:
    coordinator_address: str | None = flag(
        'distributed',
        None,
        'multi-process run: the address of process 0 (with --num-processes and --process-id)',
        metavar='HOST:PORT',
    )
    num_processes: int | None = flag('distributed', None)
    process_id: int | None = flag('distributed', None)
    distributed: bool = flag(
        'distributed',
        False,
        'multi-process run with the addresses detected from the environment (SLURM, Open MPI, TPU pod)',
    )


def check(c) -> None:
    positive(c, 'num_processes')
    non_negative(c, 'process_id')
