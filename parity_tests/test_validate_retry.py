"""validate --retry's batch-size decay against timm's own: timm.utils.decay_batch_step, step for step, and the
sequences timm's _try_run walks from the usual batch sizes."""

import pytest
from timm.utils import decay_batch_step as timm_decay_batch_step

from jax_ema.validate_retry import decay_batch_step


@pytest.mark.parametrize('num_intra_steps', [1, 2, 3, 4, 8])
@pytest.mark.parametrize('no_odd', [False, True])
def test_each_step_is_timms(num_intra_steps, no_odd):
    for batch_size in range(-1, 4100):
        ours = decay_batch_step(batch_size, num_intra_steps, no_odd)
        assert ours == timm_decay_batch_step(batch_size, num_intra_steps, no_odd), batch_size


@pytest.mark.parametrize('batch_size', [256, 1024, 100, 7])
def test_the_sequence_to_zero_is_timms(batch_size):
    ours, theirs = [batch_size], [batch_size]
    while ours[-1]:
        ours.append(decay_batch_step(ours[-1]))
        theirs.append(timm_decay_batch_step(theirs[-1]))
    assert ours == theirs
    assert len(set(ours)) == len(ours)  # strictly decreasing to 0: the retry loop ends
