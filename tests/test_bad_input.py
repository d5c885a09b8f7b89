"""Bad input: one `error: ...` line on stderr (after the log lines: timm logs to stderr), exit code 2, no
traceback, nothing created or changed.

Every case runs a CLI in-process (`jax_ema.train.main`, `jax_ema.export.main`, `jax_ema.validate.main`)
against one tiny world of folders, files and checkpoints built once per module. None of them may reach
a train step. `python tests/test_bad_input.py` prints every case's real message as a markdown table and
writes it to docs/bad-input.md. The cases are in bad_input_cases.py (the trainer's in
bad_input_train_cases.py), the check of one answer in bad_input_check.py, the table in bad_input_table.py.
"""

import sys
import tempfile
from pathlib import Path

import pytest

from bad_input_cases import CASES
from bad_input_check import CLIS, check_case
from bad_input_table import markdown_table, write_doc
from bad_input_world import build_world
from hub_cache import offline_hub


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp('bad_input'))
    with offline_hub(w.hub):
        yield w


@pytest.mark.parametrize('cli,build,expected', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(world, capfd, cli, build, expected):
    _, err, problems = check_case(world, cli, build, expected)
    assert not problems, f'{"; ".join(problems)}\nstderr: {err}'
    assert capfd.readouterr().err == '', 'written to stderr below Python (C++ logs?)'


def test_the_check_catches_a_bad_answer(world, monkeypatch):
    def sloppy_cli(argv):  # writes a run folder and a file, changes a file, prints two lines, exits 1
        (world.out / 'run').mkdir()
        (world.cwd / 'stray.txt').write_text('x')
        world.a_file.write_text('not a dataset, overwritten\n')
        print('Traceback (most recent call last):\nValueError: boom', file=sys.stderr)
        return 1

    monkeypatch.setitem(CLIS, 'sloppy', sloppy_cli)
    code, _, problems = check_case(world, 'sloppy', lambda w: [], 'expected words')
    world.a_file.write_text('not a dataset\n')
    assert code == 1 and len(problems) == 6, problems
    assert problems[-1] == f'changed or removed {world.a_file.name}', problems
    assert not any(world.out.iterdir()) and not any(world.cwd.iterdir())  # and it cleaned up


def test_cases_cover_every_cli_and_have_unique_ids():
    assert len(CASES) >= 15 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1] for c in CASES} == set(CLIS)


if __name__ == '__main__':
    with tempfile.TemporaryDirectory() as tmp:
        world_ = build_world(Path(tmp))
        with offline_hub(world_.hub):
            table_, problems_ = markdown_table(world_)
    print(table_)
    print(f'wrote {write_doc(table_, problems_)}')
    for problem in problems_:
        print('NOT AS EXPECTED:', problem, file=sys.stderr)
    sys.exit(1 if problems_ else 0)
