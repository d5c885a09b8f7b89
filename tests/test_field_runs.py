"""Runs in the field: trainers started at the same moment with the same --experiment."""

import pathlib

from jax_ema import reporting


def test_two_trainers_starting_at_once_with_one_experiment_name_get_two_folders(tmp_path, monkeypatch):
    """A job array launching one command several times: each trainer checked that NAME was free, then one of
    the mkdirs failed with 'File exists' (exit 2, as an unwritable --output). Now the loser takes NAME-1."""
    (tmp_path / 'exp').mkdir()  # made by the other trainer after this one looked (looking sees nothing here)
    monkeypatch.setattr(pathlib.Path, 'exists', lambda self: False)
    assert reporting.make_run_dir(str(tmp_path), 'exp', 'resnet18', 32) == tmp_path / 'exp-1'
    assert reporting.make_run_dir(str(tmp_path), 'exp', 'resnet18', 32) == tmp_path / 'exp-2'
