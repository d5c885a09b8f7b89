"""validate's --retry: timm validate.py's batch-size decay on out-of-memory (its `_try_run`, with timm.utils'
`decay_batch_step`), for one model and, as timm always does, for each model of a bulk validation.

On an out-of-memory error (XLA's RESOURCE_EXHAUSTED) the evaluation is run again with the next smaller batch size
of timm's sequence (256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1), logged as timm's:
`ERROR: "<error>" while running validation.` then `WARNING: Reducing batch size to N for retry.`. Other errors
are not retried (timm retries any RuntimeError but a CUDA illegal access or a channels-last rank error; here only
the one a smaller batch can cure). Without --retry an out-of-memory error is one `error:` line naming -b and
--retry, not a traceback.
"""

from __future__ import annotations

import gc
import logging
import math

from jax_ema.errors import UserError

log = logging.getLogger('jax_ema.validate')


def decay_batch_step(batch_size: int, num_intra_steps: int = 2, no_odd: bool = False) -> int:
    """The next batch size: between the powers of two, `num_intra_steps` steps of equal size (0 after 1)."""
    if batch_size <= 1:
        return 0
    base = 2 ** int(math.log(batch_size - 1) // math.log(2))  # the power of two below batch_size
    step = max(base // num_intra_steps, 1)
    smaller = base + (batch_size - base - 1) // step * step
    return smaller - 1 if no_odd and smaller % 2 else smaller


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA's out-of-memory: jax's JaxRuntimeError (jaxlib's XlaRuntimeError in older jax, both
    RuntimeErrors) with the RESOURCE_EXHAUSTED status."""
    return isinstance(error, RuntimeError) and 'RESOURCE_EXHAUSTED' in str(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def run(evaluate_at, batch_size: int, retry: bool):
    """evaluate_at(batch_size), and with `retry` again at each smaller batch size of timm's decay while it runs out
    of memory; a UserError where it still does at batch size 1, or (without `retry`) at the first."""
    while True:
        try:
            return evaluate_at(batch_size)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            why = _first_line(e)
        if not retry:
            raise UserError(
                f'out of memory at batch size {batch_size} ({why}); pass a smaller -b, or --retry to decay it as timm'
            )
        log.error('"%s" while running validation.', why)
        smaller = decay_batch_step(batch_size)
        if not smaller:
            raise UserError(f'out of memory even at batch size 1 ({why}); evaluate at a smaller --img-size')
        batch_size = smaller
        log.warning('Reducing batch size to %d for retry.', batch_size)
        gc.collect()  # the failed attempt's buffers (timm: torch.cuda.empty_cache())
