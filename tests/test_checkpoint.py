"""Checkpoint history as timm's --checkpoint-hist: the K best end-of-epoch saves plus the latest one."""

import pytest

from jax_ema import checkpoint
from jax_ema.errors import UserError
from test_train import _state


def test_keeps_k_best_plus_last_and_names_them(tmp_path):
    state = _state(None)
    manager = checkpoint.open_manager(tmp_path / 'checkpoints', keep_best=2)
    scores = {10: 1.0, 20: 5.0, 30: 3.0, 40: 4.0, 50: 2.0}
    for step, score in scores.items():
        checkpoint.save(manager, state.replace(step=step - 5), {'model': 'resnet18'})  # a recovery save
        checkpoint.save(manager, state.replace(step=step), {'model': 'resnet18'}, score=score)
    checkpoint.save(manager, state.replace(step=55), {'model': 'resnet18'})  # recovery, latest
    manager.close()
    kept = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
    assert kept == [20, 40, 55]  # best two by score, and the latest (a recovery save)
    assert checkpoint.resolve(tmp_path).name == '55'
    assert checkpoint.resolve(tmp_path / 'checkpoints' / 'last').name == '55'
    assert checkpoint.resolve(tmp_path / 'checkpoints' / 'best').name == '20'
    assert checkpoint.resolve(tmp_path / 'checkpoints' / '40').name == '40'
    assert checkpoint.read_metadata(tmp_path / 'checkpoints' / '40')['score'] == 4.0


def test_best_needs_an_end_of_epoch_checkpoint(tmp_path):
    manager = checkpoint.open_manager(tmp_path / 'checkpoints')
    checkpoint.save(manager, _state(None), {'model': 'resnet18'})
    manager.close()
    with pytest.raises(UserError, match='use last'):
        checkpoint.resolve(tmp_path / 'checkpoints' / 'best')
