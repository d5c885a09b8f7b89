"""orbax_errors: the noise after a failed restore is dropped, and only that noise."""

import asyncio
import gc
import logging

from jax_ema import orbax_errors

DROP = orbax_errors._DropUnretrievedFutures


def _unretrieved_failed_future():
    """What a failed restore leaves behind: a read that failed too, which nobody awaits."""
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(ValueError('OUT_OF_RANGE: Error reading "params.kernel"'))
    loop.close()
    del future
    gc.collect()


def test_unretrieved_failed_reads_are_dropped_after_a_failed_restore(caplog, monkeypatch):
    asyncio_log = logging.getLogger('asyncio')
    # as in a fresh process: no failed restore yet (an earlier test in this one may have installed the filter)
    monkeypatch.setattr(asyncio_log, 'filters', [f for f in asyncio_log.filters if not isinstance(f, DROP)])
    caplog.set_level(logging.ERROR, logger='asyncio')
    _unretrieved_failed_future()  # asyncio logs it (the test sees the noise it has to drop)
    assert any('Future exception was never retrieved' in r.getMessage() for r in caplog.records)
    caplog.clear()
    orbax_errors.quiet_orbax_aftermath()
    orbax_errors.quiet_orbax_aftermath()  # idempotent: one filter
    assert sum(isinstance(f, DROP) for f in asyncio_log.filters) == 1
    _unretrieved_failed_future()
    asyncio_log.error('another asyncio error')  # kept
    assert [r.getMessage() for r in caplog.records] == ['another asyncio error']
