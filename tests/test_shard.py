"""The sharded EMA (--model-ema-shard): the 8-device cases (tests/shard_cases.py) in a process of their
own, and what one device can check here: the padding, and the flag refused with --model-ema-force-cpu."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_output import error_line
from jax_ema import ema
from jax_ema.train import main
from test_parallel import device_env
from test_train import TINY, _image_folder


@pytest.mark.slow
def test_on_eight_devices_the_sharded_ema_holds_an_eighth_needs_no_collective_and_resumes_exactly():
    """Runs tests/shard_cases.py: per-device bytes / 8, no collective in the update nor added to the step,
    bit-identical to the on-device EMA, checkpoint gathered and resumed bit-identically."""
    cases = Path(__file__).with_name('shard_cases.py')
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:xdist', '-p', 'no:cacheprovider', str(cases)],
        env=device_env(8),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert '6 passed' in done.stdout


def test_padding_is_ignored_by_the_tree_and_stays_zero():
    tree = {'w': jnp.arange(5, dtype=jnp.float32), 'b': jnp.ones((2, 1)), 'n': jnp.array(3, jnp.int32)}
    flat = ema.init(tree)
    padded = flat.padded(8)
    assert padded.flat.shape == (8,) and flat.padded(7) is flat
    assert jax.tree.map(np.array_equal, padded.tree(), flat.tree()) == {'w': True, 'b': True, 'n': True}
    new = jax.tree.map(lambda x: x * 2 + 1, tree)
    params, _ = ema.update(ema.EmaConfig(decay=0.5), padded, padded, new, new, 5)
    expected, _ = ema.update(ema.EmaConfig(decay=0.5), flat, flat, new, new, 5)
    assert np.array_equal(params.flat[:7], expected.flat) and np.all(params.flat[7:] == 0)
    assert np.array_equal(params.others[0], 7)


def test_shard_and_force_cpu_are_refused_together(tmp_path, capsys):
    data = _image_folder(tmp_path / 'ds')
    argv = [
        str(data),
        *TINY,
        '--model-ema',
        '--model-ema-force-cpu',
        '--model-ema-shard',
        '--output',
        str(tmp_path / 'out'),
    ]
    assert main(argv) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith('error: --model-ema-force-cpu and --model-ema-shard exclude each other')
    assert not (tmp_path / 'out').exists()
    assert main([str(data), *TINY, '--process-id', '2', '--num-processes', '2', '--output', str(tmp_path / 'out')]) == 2
    assert 'process-id 2 is not in [0, --num-processes 2)' in capsys.readouterr().err
    assert main([str(data), *TINY, '--num-processes', '2', '--output', str(tmp_path / 'out')]) == 2
    assert 'error: cannot join the multi-process run' in capsys.readouterr().err
