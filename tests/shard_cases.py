"""The sharded EMA on 8 CPU devices. Not collected on its own: tests/test_shard.py runs this file with
pytest in a process that has 8 devices (XLA_FLAGS), since the device count is fixed when JAX starts."""

import collections
import functools
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jax_ema import checkpoint, ema, offload, parallel
from jax_ema.train import restore_state, train_step
from test_train import _batch, _state

N = 8
CFG = ema.EmaConfig(decay=0.9)
COLLECTIVE = re.compile(
    r'\b(all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter|'
    r'collective-broadcast)(?:-start)?\('
)


def collectives(compiled) -> collections.Counter:
    """The collective operations of a compiled function's HLO, by kind."""
    return collections.Counter(COLLECTIVE.findall(compiled.as_text()))


@pytest.fixture(scope='module')
def base():
    """One model and optimizer for every test: the jitted functions compile once."""
    assert jax.device_count() == N, 'run through tests/test_shard.py (8 devices)'
    return _state(CFG)


def _placed(where, base):
    state = jax.tree.map(np.array, base)  # a fresh copy (the steps donate theirs)
    ema_vars = (state.ema_params, state.ema_batch_stats)
    state = parallel.replicate(state.replace(ema_params=None, ema_batch_stats=None))
    return state.replace(
        ema_params=offload.place(ema_vars[0], where), ema_batch_stats=offload.place(ema_vars[1], where)
    )


def _fused(where, cfg=CFG):
    """The trainer's jitted, donated step with the EMA fused in (offload.build_step's), for `where`."""
    return offload.build_step(functools.partial(train_step, smoothing=0.1), cfg, where).train_step_fn


@pytest.fixture(scope='module')
def steps(base):
    """The train step with the EMA fused in, compiled for each placement (called, and inspected)."""
    batch = _batches(1)[0]
    return {where: _fused(where).lower(_placed(where, base), batch).compile() for where in ('device', 'sharded')}


def _batches(count):
    return [parallel.shard_batch(_batch(i, n=2 * N)) for i in range(count)]


def _assert_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), 'not bit-identical'


def _host(ema_tree):
    """The EMA as a numpy pytree, gathered first. Eager indexing of arrays spread over 8 CPU devices
    deadlocked XLA's CPU runtime in these tests at times (jax 0.10.2); the trainer only slices the EMA
    inside jit or on host copies."""
    return ema.tree(jax.device_get(parallel.gather(ema_tree)))


def _is_sharded(ema_tree):
    flat = ema_tree.flat
    return flat.sharding.spec == P('data') and flat.addressable_shards[0].data.shape[0] * N == flat.shape[0]


def test_each_device_holds_an_eighth_of_the_ema(base, steps):
    device, sharded = _placed('device', base), _placed('sharded', base)
    total = device.ema_params.flat.nbytes + device.ema_batch_stats.flat.nbytes
    per_device = {
        where: sum(
            leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves((s.ema_params, s.ema_batch_stats))
        )
        for where, s in (('device', device), ('sharded', sharded))
    }
    assert per_device['device'] >= total
    assert total / N <= per_device['sharded'] <= total / N + 2 * N * 4 + 64  # + padding and the scalars
    assert _is_sharded(sharded.ema_params) and _is_sharded(sharded.ema_batch_stats)
    assert sharded.ema_params.flat.shape[0] - device.ema_params.flat.shape[0] < N  # padded to a multiple
    _assert_identical(_host(sharded.ema_params), _host(device.ema_params))
    # What XLA plans for one step: the arguments shrink by 7/8 of the EMA (the params stay whole).
    args = {w: steps[w].memory_analysis().argument_size_in_bytes for w in steps}
    assert abs((args['device'] - args['sharded']) - total * (N - 1) / N) < 0.01 * total


def test_the_update_compiles_to_no_collective(base):
    state = _placed('sharded', base)
    update = offload.ema_update(CFG, 'sharded')
    compiled = update.lower(
        state.ema_params, state.ema_batch_stats, state.params, state.batch_stats, state.step, 1
    ).compile()
    assert collectives(compiled) == {}
    out = update(state.ema_params, state.ema_batch_stats, state.params, state.batch_stats, 1, 1)
    assert _is_sharded(out[0]) and _is_sharded(out[1])
    assert state.ema_params.flat.is_deleted()  # donated: updated in place


def test_the_fused_step_adds_no_collective_to_the_step(steps):
    found = {w: collectives(steps[w]) for w in steps}
    assert found['sharded'] == found['device'] and set(found['device']) == {'all-reduce'}  # the gradients'


def test_sharded_ema_equals_the_device_ema(steps, base):
    device, sharded = _placed('device', base), _placed('sharded', base)
    for batch in _batches(2):
        device, _ = steps['device'](device, batch)
        sharded, _ = steps['sharded'](sharded, batch)
    assert _is_sharded(sharded.ema_params) and _is_sharded(sharded.ema_batch_stats)
    _assert_identical((sharded.params, sharded.batch_stats), (device.params, device.batch_stats))
    _assert_identical(_host(sharded.ema_params), _host(device.ema_params))
    _assert_identical(_host(sharded.ema_batch_stats), _host(device.ema_batch_stats))
    # The update outside the step (--model-ema-update-every K, offload.build_step): a 3-update gap folded in.
    every = ema.EmaConfig(decay=0.9, update_every=3)
    folded = {
        w: offload.ema_update(every, w)(s.ema_params, s.ema_batch_stats, device.params, device.batch_stats, 7, 3)
        for w, s in (('device', device), ('sharded', sharded))
    }
    assert _is_sharded(folded['sharded'][0]) and _is_sharded(folded['sharded'][1])
    _assert_identical([_host(t) for t in folded['sharded']], [_host(t) for t in folded['device']])


def test_checkpoint_gathers_and_resume_is_bit_identical(steps, base, tmp_path):
    batches = _batches(3)
    state = _placed('sharded', base)
    state, _ = steps['sharded'](state, batches[0])
    manager = checkpoint.open_manager(tmp_path / 'checkpoints')
    step_dir = checkpoint.save(manager, state, {'model': 'resnet18', 'num_classes': 3, 'ema': {}}, score=1.0)
    manager.close()
    saved = checkpoint.restore_tree(step_dir)
    _assert_identical(saved['ema_params'], _host(state.ema_params))  # whole, unpadded
    restored = restore_state(step_dir, base)  # base is the state before that step
    restored = parallel.replicate(restored.replace(ema_params=None, ema_batch_stats=None)).replace(
        ema_params=offload.place(restored.ema_params, 'sharded'),
        ema_batch_stats=offload.place(restored.ema_batch_stats, 'sharded'),
    )
    for batch in batches[1:]:
        state, _ = steps['sharded'](state, batch)
        restored, _ = steps['sharded'](restored, batch)
    _assert_identical(checkpoint.state_tree(restored), checkpoint.state_tree(state))


def test_stacked_emas_shard_their_flat_axis_and_equal_the_device_stack():
    """Several EMAs (issue 8) are one [members, n] buffer: sharded on n, updated in the same fused step."""
    stack_cfg = ema.EmaConfig(decay=0.9, extra_decays=(0.99,), stds=(0.1,))
    base = _state(stack_cfg)
    device, sharded = _placed('device', base), _placed('sharded', base)
    step = {w: _fused(w, stack_cfg) for w in ('device', 'sharded')}
    for batch in _batches(2):
        device, _ = step['device'](device, batch)
        sharded, _ = step['sharded'](sharded, batch)
    flat = sharded.ema_params.flat
    assert flat.sharding.spec == P(None, 'data') and flat.addressable_shards[0].data.shape == (3, flat.shape[1] // N)
    _assert_identical(_host(sharded.ema_params), _host(device.ema_params))
    _assert_identical(_host(sharded.ema_batch_stats), _host(device.ema_batch_stats))
