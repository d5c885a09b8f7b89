"""Shared test set-up: a persistent XLA compilation cache so the many tiny runs compile once; pytester."""

import os
import tempfile

import jax

pytest_plugins = ['pytester']  # parity_tests/test_precision.py runs a conftest on a made-up test

_CACHE = os.path.join(tempfile.gettempdir(), 'jax_ema_test_xla_cache')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
