"""benchmarks/gpu_session.py (the one-call GPU run) and gpu_check_report.py's parts that need no GPU: limits
that stop a hung step and let the next one run, pytest's interrupt, the wheel check, the junit counts."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))
import gpu_check_report  # noqa: E402
import gpu_session  # noqa: E402

SLEEPER = [sys.executable, '-c', 'import time; time.sleep(60)']
# Writes 'interrupted' when SIGINT reaches it, as pytest writes its reports on KeyboardInterrupt.
POLITE = """import sys, time
try:
    time.sleep(60)
except KeyboardInterrupt:
    open(sys.argv[1], 'w').write('interrupted')
"""


def test_a_hung_step_is_stopped_at_its_limit_and_the_next_runs(tmp_path):
    session = gpu_session.Session(tmp_path, budget=60, reserve=0)
    t0 = time.monotonic()
    hung = session.run('hung', SLEEPER, 1.5, dict(os.environ))
    after = session.run('after', [sys.executable, '-c', 'print("ran")'], 30, dict(os.environ))
    session.finish()
    assert hung['timed_out'] and hung['rc'] != 0 and time.monotonic() - t0 < 30
    assert after == {**after, 'rc': 0, 'timed_out': False}
    written = json.loads((tmp_path / 'session.json').read_text())
    assert [s['name'] for s in written['steps']] == ['hung', 'after']
    assert 'ran' in (tmp_path / 'setup.log').read_text()


@pytest.mark.slow
def test_interrupt_reaches_the_step_so_it_can_write_its_reports(tmp_path):
    # Under pytest-xdist SIGINT is ignored, and the child would inherit that but for gpu_session._sigint_default.
    # 5 s: the interpreter must have reached its `try` before SIGINT comes, even on a loaded machine.
    session = gpu_session.Session(tmp_path, budget=60, reserve=0)
    flag = tmp_path / 'flag'
    script = tmp_path / 'polite.py'
    script.write_text(POLITE)
    step = session.run('polite', [sys.executable, str(script), str(flag)], 5, dict(os.environ), interrupt=True)
    session.finish()
    assert step['timed_out'] and flag.read_text() == 'interrupted'


def test_steps_past_the_budget_are_skipped_not_started(tmp_path):
    session = gpu_session.Session(tmp_path, budget=3, reserve=2.5)
    session.run('first', SLEEPER, 100, dict(os.environ))  # gets only the 0.5 s before the reserve
    late = session.run('late', [sys.executable, '-c', 'open("x", "w")'], 100, dict(os.environ))
    session.finish()
    assert late['skipped'] == 'no time left' and late['rc'] is None


def test_missing_modules_and_the_install_command():
    env = gpu_session.base_env()
    assert gpu_session.missing_modules(env, ('json', 'no_such_module_jax_ema')) == ['no_such_module_jax_ema']
    cmd = gpu_session.install_command(Path('/w'), Path('/t'))
    assert '--no-index' in cmd and cmd[cmd.index('--find-links') + 1] == '/w' and cmd[-2:] == ['pytest', 'pytest-xdist']
    assert gpu_session.prepend_path({'PYTHONPATH': 'a'}, Path('/t'))['PYTHONPATH'] == os.pathsep.join(['/t', 'a'])


def test_parity_command_uses_workers_only_with_xdist(tmp_path):
    args = gpu_session.parse(['--out', str(tmp_path), '--workers', '6'])
    with_xdist, without = gpu_session.parity_command(args, True), gpu_session.parity_command(args, False)
    assert with_xdist[with_xdist.index('-n') + 1] == '6' and '-n' not in without and '--dist' not in without
    assert 'parity_tests' in without and f'--junitxml={tmp_path / "parity.xml"}' in without
    quick = gpu_session.parse(['--quick', '--out', str(tmp_path), '--parity', 'parity_tests/test_convert.py -k x'])
    assert gpu_session.parity_command(quick, False)[3:6] == ['parity_tests/test_convert.py', '-k', 'x']


def test_junit_counts_of_a_real_pytest_run(tmp_path):
    (tmp_path / 'test_mix.py').write_text(
        'import pytest\n'
        'def test_ok(): pass\n'
        'def test_bad(): assert 0\n'
        '@pytest.mark.skip(reason="no float64 here")\n'
        'def test_skipped(): pass\n'
        '@pytest.fixture\n'
        'def broken(): raise RuntimeError\n'
        'def test_error(broken): pass\n'
    )
    xml = tmp_path / 'junit.xml'
    subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', f'--junitxml={xml}', 'test_mix.py'],
        cwd=tmp_path, capture_output=True, timeout=120,
    )  # fmt: skip
    suite = gpu_check_report.parity_suite(xml)
    assert {k: suite[k] for k in ('tests', 'passed', 'failed', 'errors', 'skipped')} == dict(
        tests=4, passed=1, failed=1, errors=1, skipped=1
    )
    assert suite['skip_reasons'] == {'no float64 here': 1} and any('test_bad' in f for f in suite['failures'])
    lines = '\n'.join(gpu_check_report._parity_lines({}, suite))
    assert '1 passed, 1 failed, 1 errors, 1 skipped' in lines and 'test_bad' in lines
    cut = dict(steps=[dict(name='parity', timed_out=True, seconds=9.0)])
    assert 'cut short' in gpu_check_report.section({}, suite, cut) and 'cut short' not in gpu_check_report.section(
        {}, suite
    )
    assert gpu_check_report.parity_suite(tmp_path / 'none.xml') is None


def test_write_into_replaces_only_between_the_markers(tmp_path):
    doc = tmp_path / 'gpu.md'
    doc.write_text(f'head\n{gpu_check_report.BEGIN}\nold\n{gpu_check_report.END}\ntail\n')
    gpu_check_report.write_into(doc, 'new\n')
    assert doc.read_text() == f'head\n{gpu_check_report.BEGIN}\nnew\n{gpu_check_report.END}\ntail\n'
    doc.write_text('no markers')
    assert gpu_check_report.main([str(tmp_path), '--doc', str(doc)]) == 2  # no gpu_check.json either
