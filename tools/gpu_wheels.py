"""Downloads pytest and pytest-xdist (and what they need) as wheels into benchmarks/wheels/ (ignored by git),
for a GPU machine without network whose image may lack them: benchmarks/gpu_session.py installs them from
there with `pip install --no-index`. Name the folder in the device run's `carry` (docs/gpu.md).

    python tools/gpu_wheels.py                  # for Python 3.12 (the GPU image's), this venv's versions
    python tools/gpu_wheels.py --python 3.13    # another interpreter there

Pure-Python wheels only (py3-none-any), so they install on any platform; about 2 MB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / 'benchmarks' / 'wheels'
FALLBACK = {'pytest': '9.2.0', 'pytest-xdist': '3.8.0'}  # where this venv has neither


def pins() -> list[str]:
    """pytest and pytest-xdist at the versions this venv tests with."""
    out = []
    for name, fallback in FALLBACK.items():
        try:
            out.append(f'{name}=={version(name)}')
        except PackageNotFoundError:
            out.append(f'{name}=={fallback}')
    return out


def download_command(dest: Path, python: str) -> list[str]:
    return [
        sys.executable, '-m', 'pip', 'download', '--only-binary=:all:', '--python-version', python,
        '--implementation', 'py', '--abi', 'none', '--platform', 'any', '-d', str(dest), *pins(),
    ]  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument('--python', default='3.12', help="the GPU image's Python version (default 3.12)")
    p.add_argument('--dest', type=Path, default=DEST)
    args = p.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(download_command(args.dest, args.python))
    if proc.returncode:
        print(f'error: pip download failed (exit {proc.returncode}); is a package index reachable?', file=sys.stderr)
        return 2
    wheels = sorted(args.dest.glob('*.whl'))
    size = sum(w.stat().st_size for w in wheels)
    print('\n'.join(w.name for w in wheels))
    print(f'{len(wheels)} wheels, {size / 2**20:.1f} MiB in {args.dest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
