"""Every parity comparison of the suite, measured once, as a markdown table: what | bound | largest error.

    python -m parity_tests.report            # print the table (a few minutes on 2 CPUs)
    python -m parity_tests.report --readme   # also rewrite parity_tests/README.md with it

The rows are measured by report_ema_optim.py, report_models.py and report_trajectories.py, the table
written by report_format.py. They reuse the test modules' helpers (and test_trajectory's measuring functions),
so they measure what the tests assert, with the precision pinned as in the tests; the report is not part of
the test run. Rows marked "(timm vs timm)" are calibration, not our code: how far timm is from itself under
another summation order or precision.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import timm
import torch

from parity_tests.report_ema_optim import ema_rows, optim_rows
from parity_tests.report_format import log, table
from parity_tests.report_models import convert_rows, export_rows, family_rows, forward_rows
from parity_tests.report_trajectories import calibration_rows, cases_legend, trajectory_rows
from torch_ref import precision

README = Path(__file__).with_name('README.md')


def readme(text: str, seconds: float) -> str:
    return f"""# Parity tests

jax_ema against timm's own code (timm {timm.__version__}, torch {torch.__version__}, jax {jax.__version__}):
EMA math, lr schedules, optimizers, loss, forward passes, weight conversion, export/import, and whole
training trajectories of our jitted `train_step` against timm's train.py loop (`torch_ref/trainer.py`).
float64 runs prove the semantics (only summation order differs); float32 runs bound the float32 error.
Both sides compute at one pinned float32 precision, torch on the GPU when there is one
(`torch_ref/precision.py`, docs/gpu.md).
Rows "(timm vs timm)" are calibration: how far timm is from itself.

Trajectory cases (ResNet-18 unless another model is named, from timm's init, 32x32 random images, batch 8, 10 classes,
label smoothing 0.1):

{cases_legend()}

Regenerate this page (about {seconds / 60:.0f} minutes on a {platform.machine()} machine with {os.cpu_count()} CPUs):
`python -m parity_tests.report --readme`. The tests themselves: `python -m pytest parity_tests -q`.

{text}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m parity_tests.report', description=__doc__.splitlines()[0])
    parser.add_argument('--readme', action='store_true', help=f'also write the table into {README}')
    args = parser.parse_args(argv)
    precision.pin()  # as the tests run: one float32 precision on both sides (torch_ref/precision.py)
    start, rows = time.time(), []
    for section in (
        ema_rows,
        forward_rows,
        family_rows,
        optim_rows,
        convert_rows,
        export_rows,
        trajectory_rows,
        calibration_rows,
    ):
        log(f'{section.__name__} ({time.time() - start:.0f}s)')
        rows += section()
    text = table(rows)
    print(cases_legend() + '\n\n' + text)
    log(f'done in {time.time() - start:.0f}s')
    if args.readme:
        README.write_text(readme(text, time.time() - start))
    failed = any(b != '-' and e > b for _, b, e, _ in rows)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
