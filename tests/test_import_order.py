"""TensorFlow (via jax_ema.data) and torch's lazily loaded triton must live in one process, in any order.

Each case runs in a fresh interpreter, since the failure is a SIGSEGV of the whole process; all cases
start together in one module fixture to overlap their (slow) imports.
"""

import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # four fresh interpreters importing TensorFlow, torch and triton

TORCH_STEP = """
import torch
model = torch.nn.Linear(3, 2)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
model(torch.ones(4, 3)).sum().backward()
optimizer.step()  # the first step imports triton
"""
CHECK = """
import sys
assert 'tensorflow' in sys.modules and 'triton' in sys.modules, sorted(sys.modules)
print('ok')
"""
CASES = {
    # The brief's two orders (the first also brings in jax, as the trainer does).
    'data-then-torch': 'import jax_ema.data\nimport jax\njax.numpy.ones(2).block_until_ready()\n' + TORCH_STEP + CHECK,
    'torch-then-data': 'import torch\nimport jax_ema.data\n' + TORCH_STEP + CHECK,
    # The cases above do reach the trap: without TensorFlow, the torch step alone imports triton.
    'torch-alone': TORCH_STEP + "import sys\nassert 'triton' in sys.modules\nprint('ok')",
    # Control: a plain `import tensorflow`, then triton, crashes (TF >= 2.20, tensorflow issue
    # #124205). If a future TensorFlow fixes this, this case fails and `preload_triton` may go.
    'trap': 'import os\nos.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"\nimport tensorflow\nimport triton\nprint("ok")',
}


@pytest.fixture(scope='module')
def results():
    procs = {
        name: subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, code in CASES.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (proc.returncode, stdout.strip(), stderr[-2000:])
    return out


@pytest.mark.parametrize('name', ['data-then-torch', 'torch-then-data', 'torch-alone'])
def test_runs_cleanly(results, name):
    returncode, stdout, stderr = results[name]
    assert returncode == 0 and stdout.endswith('ok'), (returncode, stderr)


def test_the_trap_is_real_without_the_preload(results):
    returncode, stdout, stderr = results['trap']
    assert returncode == -signal.SIGSEGV, (returncode, stdout, stderr)
