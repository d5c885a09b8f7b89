"""Smoke tests of benchmarks/bench_ema.py and bench_input.py (their --quick runs, in process) and
benchmarks/gpu_check.py (its --quick run where TensorFlow cannot be imported): every figure written, no timing
judged."""

import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, 'benchmarks')
sys.path.insert(0, BENCHMARKS)
import bench_ema  # noqa: E402
import gpu_check  # noqa: E402

from torch_ref.precision import problems as precision_problems  # noqa: E402

STEP_VARIANTS = {'no_ema', 'device_ema', 'host_ema', 'host_ema_k4', 'host_ema_k16'}
TIMM_VARIANTS = {'timm_no_ema', 'timm_ema', 'timm_ema_force_cpu'}
UPDATE_VARIANTS = {'ours', 'ours_flat_lerp', 'timm_v2', 'timm_v3', 'copy'}


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench_ema.json'
    threads = torch.get_num_threads()
    returned = bench_ema.main(['--quick', '--out', str(out)])
    assert torch.get_num_threads() == threads  # its --torch-threads 1 undone for the tests after it
    assert returned['torch_threads'] == 1
    with open(out) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(returned))
    return written


def positive_numbers(tree, path=''):
    """Every number in `tree` (bools aside), with its path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from positive_numbers(value, f'{path}/{key}')
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from positive_numbers(value, f'{path}/{i}')
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


@pytest.mark.slow
def test_update_figures(report):
    upd = report['ema_update']
    assert set(upd['median_s']) == set(upd['gb_per_s']) == set(upd['bytes_moved']) == UPDATE_VARIANTS
    assert set(upd['ratio_to_timm_v3']) == set(upd['fraction_of_copy_bandwidth']) == UPDATE_VARIANTS - {'copy'}
    assert upd['ratio_to_timm_v3']['timm_v3'] == 1.0
    assert upd['n_floats'] == upd['n_floats_timm']  # the same state on both sides
    assert upd['bytes_moved'] == {name: (8 if name == 'copy' else 12) * upd['n_floats'] for name in UPDATE_VARIANTS}
    assert all(len(s) == report['rounds'] for s in upd['samples'].values())


@pytest.mark.slow
def test_step_figures(report):
    step, timm_step = report['step'], report['timm_step']
    assert set(step['median_s']) == STEP_VARIANTS | {'sharded_ema'}
    assert step['ratio_to_no_ema']['sharded_ema'] > 0
    assert step['ratio_to_no_ema']['no_ema'] == 1.0
    assert set(step['offloaded_vs_on_device']) == {'k1', 'k4', 'k16'}
    assert set(timm_step['median_s']) == set(timm_step['ratio_to_no_ema']) == TIMM_VARIANTS
    ips = report['images_per_s']
    assert set(ips['images_per_s']) == set(step['median_s']) | TIMM_VARIANTS
    assert set(ips['ours_vs_timm']) == {'no_ema', 'ema', 'force_cpu_ema'}
    assert set(report['samples']) == set(step['median_s']) | TIMM_VARIANTS
    assert set(report['targets']) == {
        'ema_update_vs_timm_v3 <= 1.0',
        'ema_update_fraction_of_copy >= 0.8',
        'offloaded_k1_vs_on_device <= 1.05 (GPU)',
    }


@pytest.mark.slow
def test_every_number_positive_and_finite(report):
    numbers = dict(positive_numbers(report))
    assert len(numbers) > 50
    bad = {path: x for path, x in numbers.items() if not (math.isfinite(x) and x > 0)}
    assert not bad


def test_quick_defaults_yield_to_explicit_flags():
    args = bench_ema.parse(['--quick', '--model', 'resnet34', '--steps', '3'])
    assert (args.model, args.steps, args.rounds) == ('resnet34', 3, bench_ema.QUICK['rounds'])
    assert bench_ema.parse([]).ema_model == 'resnet50'


# --- benchmarks/bench_input.py -----------------------------------------------------------------------------

import bench_input  # noqa: E402


@pytest.fixture(scope='module')
def input_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench_input.json'
    returned = bench_input.main(['--quick', '--out', str(out)])
    with open(out) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(returned))
    return written


def test_input_figures(input_report):
    names = set(bench_input.PIPELINES)
    assert set(input_report['medians']) == {f'{side}_{name}' for name in names for side in ('ours', 'timm')}
    assert set(input_report['ours_vs_timm']) == set(input_report['estimate_16_cores']) == names
    assert all(len(s) == input_report['settings']['rounds'] for s in input_report['samples'].values())
    startup = input_report['startup']
    assert startup['files'] >= bench_input.QUICK['listing_files']  # empty files: listed, never decoded
    assert {'commit', 'machine', 'versions'} <= set(input_report) and input_report['versions']['timm']
    numbers = dict(positive_numbers({k: input_report[k] for k in ('medians', 'ours_vs_timm', 'startup')}))
    assert numbers and all(math.isfinite(x) and x > 0 for x in numbers.values())


def test_input_quick_defaults_yield_to_explicit_flags():
    args = bench_input.parse(['--quick', '--rounds', '3'])
    assert (args.rounds, args.batches) == (3, bench_input.QUICK['batches'])
    assert bench_input.parse([]).images == bench_input.FULL['images']
    assert bench_input.parse([]).only == list(bench_input.PIPELINES)
    assert bench_input.parse(['--only', 'train_default']).only == ['train_default']


@pytest.mark.slow  # ~7 s (XLA compiles the jitter)
def test_profile_default_aug_times_every_op(capsys):
    import profile_default_aug

    assert profile_default_aug.main(['--repeats', '1']) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.rsplit(None, 1)[0].strip() for line in lines] == [n.strip() for n in profile_default_aug.NAMES]
    assert all(math.isfinite(float(line.rsplit(None, 1)[1])) for line in lines)


# --------------------------------------------------------------------------- benchmarks/gpu_check.py

# What a GPU image without TensorFlow and tensorboardX must import: the step, the loop, the EMA placements,
# the torch reference, every parity test module, and gpu_check itself (run whole below).
NO_TF_MODULES = [
    'jax_ema.train',
    'jax_ema.loop',
    'jax_ema.offload',
    'jax_ema.checkpoint',
    'torch_ref.trainer',
    'torch_ref.precision',
    'report',
] + sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'parity_tests', 'test_*.py')))
WITHOUT_TENSORFLOW = """
import importlib, json, sys
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'tensorboardX', 'tensorboard', 'sklearn')  # none on the GPU image
for name in BLOCKED:
    sys.modules[name] = None  # as if not installed: `import` raises ImportError, find_spec gives None
sys.path[:0] = [{root!r}, {parity!r}, {benchmarks!r}]
for name in {modules!r}:
    importlib.import_module(name)
import gpu_check
code = gpu_check.main(['--quick', '--out', {out!r}])
loaded = [m for m in sys.modules if m.split('.')[0] in BLOCKED and sys.modules[m] is not None]
print(json.dumps(dict(code=code, loaded=loaded)))
"""


@pytest.fixture(scope='module')
def gpu_check_run(tmp_path_factory):
    """gpu_check.py --quick in a fresh interpreter where TensorFlow and tensorboardX cannot be imported."""
    out = str(tmp_path_factory.mktemp('gpu_check') / 'gpu_check.json')
    code = WITHOUT_TENSORFLOW.format(
        root=ROOT, parity=os.path.join(ROOT, 'parity_tests'), benchmarks=BENCHMARKS, modules=NO_TF_MODULES, out=out
    )
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), 'jax_ema_test_xla_cache'),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    )
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.loads(proc.stdout.strip().splitlines()[-1]), json.load(f), out, proc.stdout


@pytest.mark.slow
def test_gpu_check_needs_no_tensorflow(gpu_check_run):
    result, report, _, _ = gpu_check_run
    assert len(NO_TF_MODULES) > 10  # the parity test modules were found
    assert result == {'code': 0, 'loaded': []}
    assert report['machine']['modules_loaded'] == {'tensorflow': False, 'tensorboardX': False}


@pytest.mark.slow
def test_gpu_check_quick_report(gpu_check_run):
    _, report, _, stdout = gpu_check_run
    parts = report['parts']
    assert set(parts) == {'parity', 'step', 'timm', 'loop'}
    parity = parts['parity']
    assert parity['failed'] == 0 and len(parity['rows']) >= 5 and all(r['ok'] for r in parity['rows'])
    assert precision_problems(parity['precision']) == []  # measured with the pins in force
    variants = {f'{d}_ema_{p}' for d in ('float32', 'bfloat16') for p in ('none', 'device', 'host', 'sharded')}
    assert set(parts['step']['images_per_s']) == set(parts['step']['memory']) == variants
    for dtype in ('float32', 'bfloat16'):
        none, device, host = (parts['step']['memory'][f'{dtype}_ema_{p}'] for p in ('none', 'device', 'host'))
        assert device['device_bytes'] - none['device_bytes'] == device['ema_bytes'] > 0  # the EMA, on the device
        assert host['host_bytes'] == host['ema_bytes'] and host['device_bytes'] == none['device_bytes']  # on the host
        assert (
            none['peak_device_bytes'] < device['peak_device_bytes']
            and host['peak_device_bytes'] < device['peak_device_bytes']
        )
        assert host['peak_with_copy_in_flight'] - host['peak_device_bytes'] == host['plan']['pack']['output'] > 0
    step = parts['step']
    assert set(step['cpu_s_per_update']) == set(step['ratio_to_device_ema']) == variants
    assert step['host_average']['cpu_s'] > 0 and step['host_average']['floats'] > 0
    assert set(parts['timm']['images_per_s']) == {
        f'timm_eager_{d}_ema_{e}' for d in ('float32', 'bfloat16') for e in ('none', 'device', 'cpu')
    }
    runs = parts['loop']['runs']
    assert set(runs) == {f'float32_ema_{p}' for p in ('none', 'device', 'host', 'sharded')} | {
        'float32_ema_device_batches_on_device'
    }
    assert all(len(r['loop_images_per_s']) == 2 for r in runs.values())  # 6 updates, log every 2: the first dropped
    assert all(r['checkpoint_bytes'] > 0 and r['checkpoint_s'] > 0 for n, r in runs.items() if 'batches' not in n)
    machine = report['machine']
    assert len(machine['commit']) == 40 and machine['versions']['timm'] and machine['backend'] == 'cpu'
    bad = {path: x for path, x in positive_numbers(parts) if not math.isfinite(x) or x < 0}
    assert not bad
    assert stdout.count('| step | jax_ema ') == len(variants) and '| loop | train_epoch' in stdout


@pytest.mark.slow
def test_gpu_check_only_reruns_one_part(gpu_check_run, tmp_path):
    _, before, out, _ = gpu_check_run
    copy = tmp_path / 'report.json'
    copy.write_text(json.dumps(before))
    assert gpu_check.main(['--quick', '--only', 'timm', '--out', str(copy)]) == 0
    after = json.loads(copy.read_text())
    assert after['parts']['step'] == before['parts']['step'] and after['parts']['loop'] == before['parts']['loop']
    assert after['parts']['timm']['samples'] != before['parts']['timm']['samples']  # measured anew


@pytest.mark.slow
def test_gpu_check_report_renders_the_quick_json_into_the_docs(gpu_check_run, tmp_path):
    import gpu_check_report as r

    _, report, out, _ = gpu_check_run
    folder = tmp_path / 'session'
    folder.mkdir()
    shutil.copy(out, folder / 'gpu_check.json')
    doc = tmp_path / 'gpu.md'
    shutil.copy(os.path.join(ROOT, 'docs', 'gpu.md'), doc)
    before = doc.read_text()
    assert r.main([str(folder), '--doc', str(doc)]) == 0
    after = doc.read_text()
    head, rest = after.split(r.BEGIN)
    section, tail = rest.split(r.END)
    assert head == before.split(r.BEGIN)[0] and tail == before.split(r.END)[1]  # only the section changed
    step, step_dtypes = report['parts']['step'], ('float32', 'bfloat16')
    for dtype in step_dtypes:
        cells = [f'{step["images_per_s"][f"{dtype}_ema_{p}"]:,.0f}' for p in ('none', 'device', 'host', 'sharded')]
        row = next(line for line in section.splitlines() if line.startswith(f'| jax_ema {dtype} |'))
        assert all(c in row for c in cells)
        assert section.count(f'| timm eager channels_last {dtype} |') == 1
    rows = {dtype: sum(line.startswith(f'| {dtype}_ema_') for line in section.splitlines()) for dtype in step_dtypes}
    assert rows == {'float32': 4 + 5, 'bfloat16': 4}  # a row per placement; float32's loop runs too
    assert report['machine']['commit'][:12] in section and report['machine']['versions']['timm'] in section
    rows = len(report['parts']['parity']['rows'])
    assert f'{rows} of {rows} rows within their bounds' in section
    assert 'whole `pytest parity_tests`: not run' in section and '`--quick` run' in section


@pytest.mark.slow
def test_bench_host_ema_reports_every_variant(tmp_path):
    import bench_host_ema

    out = tmp_path / 'host.json'
    assert bench_host_ema.main(['--model', 'resnet18', '--rounds', '1', '--out', str(out)]) == 0
    report = json.loads(out.read_text())
    names = {'host_ema_averager', 'numpy_float32_1_thread', 'numpy_float32_2_thread'}
    assert set(report['wall_s']) == set(report['cpu_s']) == names and report['floats'] > 10**7
    assert all(report['cpu_s'][n] > 0 for n in names)
