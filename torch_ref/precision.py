"""One float32 precision for both sides of every parity comparison, on any backend.

On an NVIDIA GPU both frameworks round float32 matmul and conv inputs to TF32 (10-bit mantissa) by
default: JAX's 'default' matmul precision, torch's cuDNN (`torch.backends.cudnn.allow_tf32` is True by
default). Measured on an H200 (jax 0.11.2, torch 2.11): forward logits of timm models vs ours differ
by 3.4e-4 (resnet50) to 3.2e-3 (mobilenetv3_large_100) x max|logits| at default precision, 4e-7 to
1.6e-6 with TF32 off on both sides; the parity bounds are 1e-5. XLA:CPU computes float32 exactly
whatever the setting, so on the CPU the pins change nothing and cost nothing.

`pin()` is the one place that sets them (parity_tests/conftest.py calls it for every parity test,
benchmarks/gpu_check.py and parity_tests/report.py before measuring):
  JAX    jax_default_matmul_precision = 'highest' (every dot and conv, jitted or not, at trace time)
  torch  cuBLAS matmul and cuDNN conv without TF32, float32 matmul precision 'highest', cuDNN
         deterministic with its autotuner off (the same conv algorithm every run)
torch's `use_deterministic_algorithms(True)` is not set: no bound needs it (float64 runs differ by
summation order only, ~1e-13, with bounds of 1e-10 and above), and it raises on ops without a
deterministic CUDA kernel that timm's models use (adaptive average pooling's backward).

The torch flags are set through torch's legacy TF32 switches, present in every torch version we
support; a process that also sets the newer `fp32_precision` switches ends up in torch's "mixed API"
state, which `state()` reports and `check()` rejects.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import torch

JAX_PRECISION = 'highest'


def torch_device() -> torch.device:
    """Where the torch side runs: the GPU when torch has one, else the CPU (JAX: its default backend)."""
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def _new_api_precisions() -> dict:
    """torch >= 2.9's per-backend fp32_precision switches ('tf32' = TF32 on), where this torch has them."""
    out = {}
    for name, switch in (
        ('cuda.matmul', getattr(torch.backends.cuda.matmul, 'fp32_precision', None)),
        ('cudnn.conv', getattr(getattr(torch.backends.cudnn, 'conv', None), 'fp32_precision', None)),
        ('cudnn.rnn', getattr(getattr(torch.backends.cudnn, 'rnn', None), 'fp32_precision', None)),
    ):
        if isinstance(switch, str):
            out[name] = switch
    return out


def state() -> dict:
    """The precision settings in force now, both sides (what `check()` judges; JSON-friendly)."""
    try:
        tf32 = {
            'cuda_matmul_allow_tf32': bool(torch.backends.cuda.matmul.allow_tf32),
            'cudnn_allow_tf32': bool(torch.backends.cudnn.allow_tf32),
        }
    except RuntimeError as e:  # torch >= 2.9 when its legacy and new TF32 switches were both used
        tf32 = {
            'cuda_matmul_allow_tf32': f'unreadable: {str(e)[:80]}',
            'cudnn_allow_tf32': f'unreadable: {str(e)[:80]}',
        }
    return {
        'jax_default_matmul_precision': jax.config.jax_default_matmul_precision,
        **tf32,
        'torch_float32_matmul_precision': torch.get_float32_matmul_precision(),
        'cudnn_deterministic': bool(torch.backends.cudnn.deterministic),
        'cudnn_benchmark': bool(torch.backends.cudnn.benchmark),
        'torch_fp32_precision': _new_api_precisions(),
    }


def problems(current: dict | None = None) -> list[str]:
    """What in `current` (default: `state()`) is not pinned; empty when everything is."""
    s = state() if current is None else current
    wrong = []
    if s['jax_default_matmul_precision'] != JAX_PRECISION:
        wrong.append(f'jax_default_matmul_precision is {s["jax_default_matmul_precision"]!r}, not {JAX_PRECISION!r}')
    for key in ('cuda_matmul_allow_tf32', 'cudnn_allow_tf32'):
        if s[key] is not False:
            wrong.append(f'torch {key} is {s[key]!r}, not False')
    if s['torch_float32_matmul_precision'] != 'highest':
        wrong.append(f"torch float32 matmul precision is {s['torch_float32_matmul_precision']!r}, not 'highest'")
    if not s['cudnn_deterministic'] or s['cudnn_benchmark']:
        wrong.append('cuDNN is not deterministic with its autotuner off')
    wrong += [
        f'torch {name}.fp32_precision is {value!r}'
        for name, value in s['torch_fp32_precision'].items()
        if value == 'tf32'
    ]
    return wrong


def check() -> None:
    """AssertionError naming every setting that is not pinned (a GPU would fall back to TF32)."""
    wrong = problems()
    assert not wrong, 'precision not pinned: ' + '; '.join(wrong)


def pin():
    """Pins both sides (see the module docstring); returns a function that restores what was there."""
    before = dict(
        jax=jax.config.jax_default_matmul_precision,
        highest=torch.get_float32_matmul_precision(),
        deterministic=torch.backends.cudnn.deterministic,
        benchmark=torch.backends.cudnn.benchmark,
    )
    try:
        before.update(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # torch's mixed-API state: restore TF32 off rather than guess
        before.update(matmul=False, cudnn=False)
    jax.config.update('jax_default_matmul_precision', JAX_PRECISION)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision('highest')
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    def restore():
        jax.config.update('jax_default_matmul_precision', before['jax'])
        torch.backends.cuda.matmul.allow_tf32 = before['matmul']
        torch.backends.cudnn.allow_tf32 = before['cudnn']
        torch.set_float32_matmul_precision(before['highest'])
        torch.backends.cudnn.deterministic = before['deterministic']
        torch.backends.cudnn.benchmark = before['benchmark']

    return restore


@functools.cache
def float64_missing() -> str | None:
    """Why float64 cannot be compared here, measured (None: both sides compute float64 on this machine).

    A 64 x 64 float64 matmul on JAX's default backend and on torch's device, against numpy's: a backend
    without float64 (TPU's emulation, Apple's MPS) either refuses or is off by far more than 1e-12.
    """
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 64)), rng.normal(size=(64, 64))
    exact = a @ b
    reasons = []
    try:
        with jax.enable_x64(True):
            ours = np.asarray(jax.jit(jax.numpy.matmul)(a, b))
        err = float(np.abs(ours - exact).max() / np.abs(exact).max())
        if ours.dtype != np.float64 or err > 1e-12:
            reasons.append(f'JAX on {jax.default_backend()}: float64 matmul gives {ours.dtype}, off by {err:.2g}')
    except Exception as e:  # pylint: disable=broad-except
        reasons.append(f'JAX on {jax.default_backend()}: float64 matmul fails ({type(e).__name__}: {e})')
    device = torch_device()
    try:
        theirs = (torch.from_numpy(a).to(device) @ torch.from_numpy(b).to(device)).cpu().numpy()
        err = float(np.abs(theirs - exact).max() / np.abs(exact).max())
        if theirs.dtype != np.float64 or err > 1e-12:
            reasons.append(f'torch on {device}: float64 matmul gives {theirs.dtype}, off by {err:.2g}')
    except Exception as e:  # pylint: disable=broad-except
        reasons.append(f'torch on {device}: float64 matmul fails ({type(e).__name__}: {e})')
    return ('float64 bound cannot hold here: ' + '; '.join(reasons)) if reasons else None
