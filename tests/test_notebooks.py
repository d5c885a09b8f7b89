"""The notebooks run top to bottom and write their figures (nbclient, a kernel of this interpreter).

Each notebook runs in its own kernel in a temporary folder, with JAX_EMA_NOTEBOOK_OUT pointing into it.
The kernel is `python3` from a kernelspec written for this interpreter (ipykernel's, put first on
JUPYTER_PATH), so the notebooks see this environment's jax_ema whatever other kernels are installed.
"""

import os
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / 'notebooks'
FIGURES = {
    '01_ema_basics.ipynb': ('01_warmup.png', '01_horizon.png', '01_update_every.png'),
    '02_train_with_ema.ipynb': ('02_raw_vs_ema.png', '02_runs_top1.png', '02_trajectory_pca.png'),
    '03_parity_with_timm.ipynb': ('03_parity.png',),
}
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# The same persistent XLA cache as conftest.py: a second run of the notebooks compiles nothing.
XLA_CACHE = os.path.join(tempfile.gettempdir(), 'jax_ema_test_xla_cache')


@pytest.fixture(scope='session')
def jupyter_path(tmp_path_factory):
    """A folder holding a `python3` kernelspec that runs this interpreter (sys.executable)."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp('kernelspec')
    install(prefix=str(prefix), kernel_name='python3')
    return prefix / 'share' / 'jupyter'


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob('*.ipynb')) == sorted(FIGURES)


@pytest.mark.parametrize('name', sorted(FIGURES))
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FIGURES))
def test_notebook_runs_and_saves_its_figures(name, tmp_path, monkeypatch, jupyter_path):
    out = tmp_path / 'figures'
    monkeypatch.setenv('JUPYTER_PATH', str(jupyter_path))
    monkeypatch.setenv('JAX_EMA_NOTEBOOK_OUT', str(out))
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', XLA_CACHE)
    monkeypatch.setenv('TMPDIR', str(tmp_path))  # the notebooks' own temporary folders go here
    spec = KernelSpecManager().get_kernel_spec('python3')
    assert spec.argv[0] == sys.executable, spec.argv

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, at the first failing cell

    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs if o.output_type == 'error']
    assert not errors
    assert all(c.execution_count for c in nb.cells if c.cell_type == 'code')  # every cell ran
    for figure in FIGURES[name]:
        data = (out / figure).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, figure
