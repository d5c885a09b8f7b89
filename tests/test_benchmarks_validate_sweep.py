"""Smoke test of benchmarks/validate_sweep.py: its --quick run (a tiny run trained first, in process) times both
sweeps over every checkpoint and reports them; no timing judged."""

import ast
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import validate_sweep  # noqa: E402


@pytest.mark.slow  # trains 2 epochs of resnet18 at 32 px, then validates each checkpoint three times
def test_quick_sweep_reports_both_ways(capsys):
    report = validate_sweep.main(['--quick'])
    assert report['checkpoints'] == validate_sweep.QUICK['epochs']  # one checkpoint an epoch
    assert set(report) == {'checkpoints', 'per_checkpoint', 'shared'}
    assert all(math.isfinite(report[k]) and report[k] > 0 for k in ('per_checkpoint', 'shared'))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f'{report["checkpoints"]} checkpoints: a dataset per checkpoint ')
    runs = ast.literal_eval(line.split('runs: ', 1)[1][:-1])
    assert {k: len(v) for k, v in runs.items()} == {'per_checkpoint': 1, 'shared': 1}  # --quick: one repeat
    assert {k: v[0] for k, v in runs.items()} == {k: report[k] for k in runs}
