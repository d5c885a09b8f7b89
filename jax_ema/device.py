"""`--device`: which JAX platform runs the computation, named as timm names devices.

timm's `--device cuda` / `cpu` map to JAX's platforms (`gpu` is the same as `cuda`; `tpu` is JAX's own);
left empty, JAX picks (a GPU or TPU where there is one, else the CPU). `select` sets `jax_platforms`, which
only counts before JAX starts its backends; `check` then confirms the platform is there, and a missing one
is one line (exit 2) rather than JAX's fall-back to the CPU.
"""

from __future__ import annotations

import jax

from jax_ema.errors import UserError

CHOICES = ('cpu', 'cuda', 'gpu', 'tpu')
_PLATFORMS = {'cpu': 'cpu', 'cuda': 'cuda', 'gpu': 'cuda', 'tpu': 'tpu'}  # --device -> jax_platforms
_BACKENDS = {'cpu': 'cpu', 'cuda': 'gpu', 'gpu': 'gpu', 'tpu': 'tpu'}  # --device -> jax.default_backend()


_INSTALL = {
    'cpu': 'check the jax install',
    'cuda': 'on a machine with an NVIDIA GPU, pip install "jax[cuda12]"',
    'gpu': 'on a machine with an NVIDIA GPU, pip install "jax[cuda12]"',
    'tpu': 'on a TPU VM, pip install "jax[tpu]"',
}


_before = []  # jax_platforms as it was before select(), restored where the platform fails to start


def select(device: str) -> None:
    """Ask JAX for `device`'s platform (nothing for ''); call before any JAX computation."""
    if device and not _started():
        _before.append(jax.config.jax_platforms)
        jax.config.update('jax_platforms', _PLATFORMS[device])


def check(device: str) -> None:
    """UserError unless JAX computes on `device` (starts the backends)."""
    if not device:
        return
    try:
        backend = jax.default_backend()
    except Exception as e:  # noqa: BLE001  (JAX raises RuntimeError, or fails an assert, when none started)
        reason = str(e).splitlines()[0].split(' (set JAX_PLATFORMS')[0] if str(e) else 'no device of it is visible'
        if _before:  # so that JAX works again in this process (a notebook, a test) on what it had
            jax.config.update('jax_platforms', _before.pop())
        raise UserError(
            f'--device {device}: JAX cannot start {_PLATFORMS[device]} here ({reason[:160]}); '
            f'{_INSTALL[device]}, or pass --device cpu'
        ) from None
    if backend != _BACKENDS[device]:
        raise UserError(
            f'--device {device}: JAX runs on {backend} in this process, not {_BACKENDS[device]} (it started before '
            f'--device was read, or has no {_PLATFORMS[device]} plugin); pass --device {backend} or leave it out'
        )


def _started() -> bool:
    from jax._src import xla_bridge  # no public way to ask whether the backends have started

    started = getattr(xla_bridge, 'backends_are_initialized', None)  # jax 0.4.30 to 0.11 at least
    return started() if started is not None else bool(getattr(xla_bridge, '_backends', None))
