"""Smoke tests of benchmarks/bench_ema.py and bench_input.py: their --quick runs, in process, write every
figure (no timings judged)."""
import json
import math
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks')
sys.path.insert(0, BENCHMARKS)
import bench_ema  # noqa: E402

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
    assert set(report['targets']) == {'ema_update_vs_timm_v3 <= 1.0', 'ema_update_fraction_of_copy >= 0.8',
                                      'offloaded_k1_vs_on_device <= 1.05 (GPU)'}


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
