"""Several processes (jax.distributed on localhost, gloo collectives on CPU) give what one process gives.

2 processes x 2 CPU devices with the sharded EMA against 1 process x 4 devices, same global batch of 8:
16 noise images, 2 updates per epoch, 4 in all. Process 1 is sent SIGTERM after update 3: both processes
must stop at update 3 with one checkpoint, which 1 process x 4 devices then resumes to the end (the data
order does not depend on the process count).
"""

import socket
import subprocess
import sys

import pytest

from jax_ema import checkpoint, reporting
from jax_ema.loop import SIGNAL_AT_UPDATE
from test_parallel import assert_close, device_env, noise_folder

pytestmark = pytest.mark.slow  # several processes training together

RUN = [
    '--model',
    'resnet18',
    '--img-size',
    '32',
    '--epochs',
    '2',
    '--warmup-epochs',
    '0',
    '--lr',
    '0.01',
    '-b',
    '2',
    '--model-ema',
    '--model-ema-decay',
    '0.9',
    '--model-ema-warmup',
    '--log-interval',
    '1',
    '--experiment',
    'run',
]
TRAIN = [sys.executable, '-m', 'jax_ema.train']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _two_processes(data, out, extra=(), fault_in_process_1=None):
    """Both processes of a 2 x 2-device run; returns their (returncode, stdout, stderr)."""
    address = f'127.0.0.1:{_free_port()}'
    procs = []
    for rank in range(2):
        env = device_env(2)
        if rank == 1 and fault_in_process_1:
            env[SIGNAL_AT_UPDATE] = fault_in_process_1
        procs.append(
            subprocess.Popen(
                [
                    *TRAIN,
                    str(data),
                    *RUN,
                    '--output',
                    str(out),
                    *extra,
                    '--coordinator-address',
                    address,
                    '--num-processes',
                    '2',
                    '--process-id',
                    str(rank),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
        return [(p.returncode, *out) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return noise_folder(tmp_path_factory.mktemp('multihost') / 'ds', train_per_class=8, validation_per_class=2)


@pytest.fixture(scope='module')
def reference(data, tmp_path_factory):
    """1 process x 4 devices, uninterrupted: its checkpoints after updates 2 (epoch 0) and 4."""
    out = tmp_path_factory.mktemp('one_process')
    done = subprocess.run(
        [*TRAIN, str(data), *RUN, '--output', str(out)], env=device_env(4), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {step: checkpoint.restore_tree(out / 'run' / 'checkpoints' / str(step)) for step in (2, 4)}


def test_two_processes_match_one_stop_together_and_resume_in_one(data, tmp_path, reference):
    (code0, out0, err0), (code1, out1, err1) = _two_processes(data, tmp_path, ['--model-ema-shard'], '3:TERM')
    assert (code0, code1) == (0, 0), err0[-3000:] + err1[-3000:]
    assert 'Stopped by a signal at update 3' in out0  # process 0 agreed to process 1's SIGTERM
    assert 'Train:' in err0 and 'Train:' not in err1 and 'Stopped' not in out1  # process 0 alone logs
    run = tmp_path / 'run'
    assert sorted(p.name for p in (run / 'checkpoints').iterdir() if p.name.isdigit()) == ['2', '3']
    assert [r['epoch'] for r in reporting.read_summary(run)] == ['0']  # one row: one writer
    assert_close(reference[2], checkpoint.restore_tree(run / 'checkpoints' / '2'))  # 2 x 2 == 1 x 4

    done = subprocess.run(
        [
            *TRAIN,
            str(data),
            *RUN,
            '--model-ema-shard',
            '--resume',
            str(run),  # RUN's --experiment:
            '--output',
            str(tmp_path),
        ],  # --output/--experiment is the run, so it goes on there
        env=device_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r['epoch'] for r in reporting.read_summary(run)] == ['0', '1']
    final = checkpoint.restore_tree(checkpoint.resolve(run))
    assert int(final['step']) == 4
    assert_close(reference[4], final, keys=('params', 'batch_stats', 'ema_params', 'ema_batch_stats', 'opt_state'))
