"""Issue 15's GPU run in one call: the machine, gpu_check.py in full, then the whole parity suite, each
part under its own time limit, everything written to one folder as it lands. Standard library only: it
reports what it can even where jax or torch fail to import.

    PYTHONPATH=. python benchmarks/gpu_session.py --out "$OUT"          # on the GPU machine (docs/gpu.md)
    PYTHONPATH=. python benchmarks/gpu_session.py --quick --out /tmp/s  # dry run on a CPU: the same steps, small

Steps, in order (each a subprocess; one that hangs is stopped at its limit and the next one runs):
  versions    python, jax, torch, timm and the rest, the devices each sees, nvidia-smi, the commit
  pytest      pytest and pytest-xdist imported, else installed from local wheels (tools/gpu_wheels.py) into a
              folder put first on PYTHONPATH; without xdist the parity suite runs in one process
  gpu_check   benchmarks/gpu_check.py (its JSON is saved after every part, so a cut-short run keeps those)
  parity      pytest parity_tests, -n WORKERS processes sharing the GPU (XLA_PYTHON_CLIENT_PREALLOCATE=false:
              no process takes 75 % of it), --dist worksteal (the two largest modules take a fifth of the
              suite's time each), stopped with SIGINT at its limit so pytest still writes its junit XML of
              the tests that ran
  report      benchmarks/gpu_check_report.py: the docs section, rendered from the above

The folder gets at most 7 files (the device tool brings back 8): session.json (steps, versions, nvidia-smi),
gpu_check.json, gpu_check.log, parity.xml, parity.log, setup.log and gpu_results.md. The limits come out of
one budget (--budget, default 540 s): gpu_check gets at most --gpu-check-s and leaves --parity-min-s for the
parity suite, which gets what is left but --reserve-s.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))
import gpu_check_report  # noqa: E402

NEEDED = ('pytest', 'xdist')  # the modules the parity suite's run needs (xdist: pytest-xdist)
WHEELS = ROOT / 'benchmarks' / 'wheels'
GRACE_S = 20  # from the interrupt at a step's limit to SIGKILL
QUICK_PARITY = ['parity_tests/test_precision.py', 'parity_tests/test_schedule_parity.py']

VERSIONS = r"""
import json, os, platform, sys
from importlib.metadata import version, PackageNotFoundError
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
out = dict(python=platform.python_version(), executable=sys.executable, cpu_count=os.cpu_count())
out['packages'] = {n: v(n) for n in ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax',
    'orbax-checkpoint', 'torch', 'torchvision', 'timm', 'numpy', 'huggingface_hub', 'safetensors', 'pytest',
    'pytest-xdist', 'pytest-timeout', 'tensorflow', 'tensorboardX')}
try:
    import jax
    out['jax_backend'] = jax.default_backend()
    out['jax_devices'] = [str(d) for d in jax.devices()]
except Exception as e:
    out['jax_error'] = repr(e)[:500]
try:
    import torch
    out['torch_cuda'] = torch.cuda.is_available()
    out['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out['torch_cuda_version'] = torch.version.cuda
except Exception as e:
    out['torch_error'] = repr(e)[:500]
print(json.dumps(out))
"""


def missing_modules(env: dict, names=NEEDED) -> list[str]:
    """Which of `names` the interpreter cannot find with `env` (its PYTHONPATH)."""
    code = f'import importlib.util as u, json; print(json.dumps([n for n in {list(names)!r} if not u.find_spec(n)]))'
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=60)
    return json.loads(proc.stdout) if proc.returncode == 0 else list(names)


def install_command(wheels: Path, target: Path) -> list[str]:
    """pip installing pytest and pytest-xdist from `wheels` alone (no index: the GPU machine has no network)
    into `target`, leaving the image's own packages as they are."""
    return [
        sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-compile', '--disable-pip-version-check',
        '--find-links', str(wheels), '--target', str(target), 'pytest', 'pytest-xdist',
    ]  # fmt: skip


def prepend_path(env: dict, folder: Path) -> dict:
    parts = [str(folder)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    return dict(env, PYTHONPATH=os.pathsep.join(parts))


def _sigint_default():
    """In the child before its exec: SIGINT back to its default. A parent that ignores it (a shell's background
    job, a pytest-xdist worker) passes SIG_IGN on, and Python then never raises KeyboardInterrupt: pytest would
    not write its reports at the limit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Session:
    """The steps run so far, their limits taken from one deadline; session.json rewritten after each."""

    def __init__(self, out: Path, budget: float, reserve: float):
        self.out, self.start, self.reserve = out, time.monotonic(), reserve
        self.deadline = self.start + budget
        self.summary = dict(budget_s=budget, started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), steps=[])
        out.mkdir(parents=True, exist_ok=True)
        self.setup_log = open(out / 'setup.log', 'a')  # noqa: SIM115  (closed in finish)

    def left(self) -> float:
        """Seconds left for steps, the reserve for the report kept back."""
        return self.deadline - self.reserve - time.monotonic()

    def run(self, name: str, cmd: list[str], limit: float, env: dict, log=None, interrupt=False) -> dict:
        """Runs `cmd` for at most `limit` seconds (never past the deadline); output to `log` (a path; default
        setup.log). At the limit: SIGINT first where `interrupt` (pytest then writes its reports), SIGTERM
        otherwise, and SIGKILL to its whole process group GRACE_S later."""
        limit = max(0.0, min(limit, self.left()))
        step = dict(name=name, cmd=cmd, limit_s=round(limit), timed_out=False)
        t0 = time.monotonic()
        if limit < 1:
            step.update(rc=None, seconds=0.0, skipped='no time left')
            return self._record(step)
        sink = open(log, 'a') if log else self.setup_log  # noqa: SIM115
        sink.write(f'\n=== {name}: {" ".join(cmd)}\n')
        sink.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_sigint_default,
        )
        try:
            step['rc'] = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            step['timed_out'] = True
            proc.send_signal(signal.SIGINT if interrupt else signal.SIGTERM)
            try:
                step['rc'] = proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                step['rc'] = proc.wait()
        finally:
            try:  # what it left behind (pytest's workers, a compile worker) goes with it
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            if log:
                sink.close()
        step['seconds'] = round(time.monotonic() - t0, 1)
        return self._record(step)

    def _record(self, step: dict) -> dict:
        self.summary['steps'].append(step)
        self.save()
        return step

    def save(self):
        self.summary['seconds'] = round(time.monotonic() - self.start, 1)
        tmp = self.out / 'session.json.tmp'
        tmp.write_text(json.dumps(self.summary, indent=2) + '\n')
        tmp.replace(self.out / 'session.json')

    def finish(self):
        self.save()
        self.setup_log.close()
        for tmp in self.out.glob('*.tmp'):  # a write cut short: the tool brings back 8 files at most
            tmp.unlink()


def capture(cmd: list[str], env: dict, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        return (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f'{cmd[0]}: {e!r}'


def versions(session: Session, env: dict) -> None:
    """The machine, its packages and the commit into session.json."""
    s = session.summary
    t0 = time.monotonic()
    raw = capture([sys.executable, '-c', VERSIONS], env, timeout=min(120, max(session.left(), 1)))
    try:
        s['versions'] = json.loads(raw.splitlines()[-1])
    except (ValueError, IndexError):
        s['versions'] = dict(error=raw[-2000:])
    s['gpu'] = s['versions'].get('gpu')
    s['nvidia_smi'] = capture(['nvidia-smi'], env, timeout=30)
    driver = capture(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], env, timeout=30)
    s['driver'] = driver if driver and driver[0].isdigit() else None
    git = capture(['git', 'rev-parse', 'HEAD'], env, timeout=20)
    s['commit'] = git if len(git) == 40 else os.environ.get('GPU_COMMIT', 'unknown')
    session._record(dict(name='versions', rc=0, seconds=round(time.monotonic() - t0, 1), timed_out=False))


def ensure_pytest(session: Session, env: dict, wheels: Path) -> tuple[dict, bool]:
    """(env, whether pytest-xdist is there): installs pytest and pytest-xdist from `wheels` where missing."""
    missing = missing_modules(env)
    session.summary['pytest_missing'] = missing
    if missing:
        target = Path(os.environ.get('TMPDIR', '/tmp')) / 'jax_ema_pytest_site'
        if not wheels.is_dir():
            session._record(dict(name='pytest', rc=None, seconds=0.0, skipped=f'{wheels} is missing'))
        else:
            session.run('pytest', install_command(wheels, target), 120, env)
            env = prepend_path(env, target)
    still = missing_modules(env)
    session.summary['pytest_missing_after'] = still
    return env, 'pytest' not in still and 'xdist' not in still


def parity_command(args, xdist: bool) -> list[str]:
    chosen = shlex.split(args.parity) if args.parity else (QUICK_PARITY if args.quick else ['parity_tests'])
    cmd = [sys.executable, '-m', 'pytest', *chosen]
    cmd += ['-q', '-rfEs', '-p', 'no:cacheprovider', '--durations=25', f'--junitxml={args.out / "parity.xml"}']
    if xdist and args.workers > 1:
        cmd += ['-n', str(args.workers), '--dist', args.dist]
    return cmd


def base_env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONUNBUFFERED='1',
        XLA_PYTHON_CLIENT_PREALLOCATE='false',  # several JAX processes and torch share one GPU
        HF_HUB_OFFLINE='1',  # no network there; the tests build their own hub cache
        TF_CPP_MIN_LOG_LEVEL='1',
    )
    return prepend_path(env, ROOT)


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_out = os.environ.get('OUT') or str(ROOT / 'benchmarks' / 'results' / 'gpu_session')
    p.add_argument('--out', type=Path, default=Path(default_out), help='output folder (default $OUT)')
    p.add_argument('--quick', action='store_true', help='gpu_check --quick and a parity subset: a dry run')
    p.add_argument('--budget', type=float, default=540, help='seconds for the whole session')
    p.add_argument('--gpu-check-s', type=float, default=270, help='most seconds for gpu_check.py')
    p.add_argument('--parity-min-s', type=float, default=180, help='seconds gpu_check leaves to the parity suite')
    p.add_argument('--reserve-s', type=float, default=15, help='seconds kept for the report at the end')
    p.add_argument('--workers', type=int, default=8, help='pytest-xdist processes sharing the GPU (1: none)')
    p.add_argument(
        '--dist',
        default='worksteal',
        help="pytest-xdist's scheduling (worksteal: idle workers take pending tests; loadfile: a module per worker)",
    )
    p.add_argument('--wheels', type=Path, default=WHEELS, help='folder of pytest and pytest-xdist wheels')
    p.add_argument('--skip', action='append', default=[], choices=('gpu_check', 'parity'), help='leave a step out')
    p.add_argument('--parity', help="pytest's arguments instead of 'parity_tests', one string (quick: a subset)")
    p.add_argument('--gpu-check-args', default='', help='more arguments to gpu_check.py, one string')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    args.out = args.out.resolve()
    session = Session(args.out, args.budget, args.reserve_s)
    session.summary.update(quick=args.quick, workers=args.workers)
    env = base_env()
    try:
        versions(session, env)
        env, xdist = ensure_pytest(session, env, args.wheels)
        if 'gpu_check' not in args.skip:
            cmd = [sys.executable, 'benchmarks/gpu_check.py', '--out', str(args.out / 'gpu_check.json')]
            cmd += ['--quick'] * args.quick + shlex.split(args.gpu_check_args)
            limit = min(args.gpu_check_s, session.left() - args.parity_min_s)
            session.run('gpu_check', cmd, limit, env, log=args.out / 'gpu_check.log')
        if 'parity' not in args.skip:
            session.run(
                'parity', parity_command(args, xdist), session.left(), env, log=args.out / 'parity.log', interrupt=True
            )
        render(args.out, session)
    finally:
        session.finish()
    failed = [s['name'] for s in session.summary['steps'] if s.get('rc') not in (0, None) or s.get('timed_out')]
    print(f'gpu_session: {session.summary["seconds"]:.0f} s; steps not clean: {failed or "none"}; files in {args.out}')
    return 1 if failed else 0


def render(out: Path, session: Session) -> None:
    """The docs section into gpu_results.md, from whatever the steps left."""
    t0 = time.monotonic()
    try:
        report, suite, _ = gpu_check_report.load(out)
        text = gpu_check_report.section(report, suite, session.summary)
        rc = 0
    except (gpu_check_report.Missing, KeyError, ValueError, TypeError) as e:
        text, rc = f'no results section: {e!r}\n', 1
    (out / 'gpu_results.md').write_text(text)
    session._record(dict(name='report', rc=rc, seconds=round(time.monotonic() - t0, 1), timed_out=False))


if __name__ == '__main__':
    sys.exit(main())
