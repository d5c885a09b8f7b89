"""Process-level fixes that must run before TensorFlow is imported (only `jax_ema.data` imports it)."""

import os


def preload_triton() -> None:
    """Imports triton, if installed, so that a TensorFlow loaded afterwards cannot break it.

    TensorFlow >= 2.20 loads its LLVM into the global symbol namespace; a triton loaded after that
    (torch imports it lazily, e.g. at the first optimizer step) dies with SIGSEGV (tensorflow issue
    #124205; the POT library ships the same fix). With triton loaded first, both orders work.
    """
    try:
        import triton  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
        pass


def quiet_tensorflow() -> None:
    """Silences TensorFlow's C++ start-up logs; call before `import tensorflow`.

    The user can still override either variable from the environment.
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    # oneDNN only changes TF's own matmul/conv kernels, which the input pipeline never runs; turning it
    # off just removes the start-up notice about it.
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


def hide_gpus_from(tf) -> None:
    """Keeps TensorFlow on the CPU so that it never grabs GPU memory meant for JAX or torch."""
    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:
        pass  # TF was already initialised by someone else; its devices can no longer change.
