"""Runs in the field: trainers started at the same moment with the same --experiment; a resume of a run killed
before its first save."""

import pathlib

import pytest

from jax_ema import checkpoint, reporting
from jax_ema.errors import UserError


def test_two_trainers_starting_at_once_with_one_experiment_name_get_two_folders(tmp_path, monkeypatch):
    """A job array launching one command several times: each trainer checked that NAME was free, then one of
    the mkdirs failed with 'File exists' (exit 2, as an unwritable --output). Now the loser takes NAME-1."""
    (tmp_path / 'exp').mkdir()  # made by the other trainer after this one looked (looking sees nothing here)
    monkeypatch.setattr(pathlib.Path, 'exists', lambda self: False)
    assert reporting.make_run_dir(str(tmp_path), 'exp', 'resnet18', 32) == tmp_path / 'exp-1'
    assert reporting.make_run_dir(str(tmp_path), 'exp', 'resnet18', 32) == tmp_path / 'exp-2'


def test_resuming_a_run_killed_before_its_first_save_says_to_start_it_again(tmp_path):
    """Killed during compile or epoch 0: the folder has args.yaml and an empty checkpoints/ (perhaps an orbax tmp
    folder); --resume RUN said only 'give a run folder that has saved at least one epoch'."""
    run = tmp_path / 'run'
    (run / 'checkpoints' / '3.orbax-checkpoint-tmp-1').mkdir(parents=True)
    (run / 'args.yaml').write_text('model: resnet18\n')
    with pytest.raises(UserError, match='before its first save.*start it again without --resume'):
        checkpoint.resolve(run)
