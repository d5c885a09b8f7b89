"""The trainer: one jitted step, the host EMA, EMA-off -> EMA-on restore, and the CLI end to end."""

import csv
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cli_output import error_line, parse_timm_train
from jax_ema import checkpoint, ema, losses, offload, optim, reporting
from jax_ema.models import create_model
from jax_ema.train import create_train_state, main, restore_state, train_step

IMG = 32


def _state(ema_cfg, seed=0, num_classes=3):
    model = create_model('resnet18', num_classes)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, IMG, IMG, 3)), train=False)
    tx = optim.create_optimizer('sgd', lambda step: 0.05, 1e-4, 0.9)
    return create_train_state(model, tx, variables, ema_cfg)


def _batch(seed=0, n=4, num_classes=3):
    rng = np.random.default_rng(seed)
    return {
        'image': rng.normal(size=(n, IMG, IMG, 3)).astype(np.float32),
        'label': rng.integers(0, num_classes, size=n).astype(np.int32),
    }


def _max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def ema_cfg():
    return ema.EmaConfig(decay=0.9)


@pytest.fixture(scope='module')
def step_fn(ema_cfg):
    return jax.jit(lambda s, b: train_step(s, b, ema_cfg, 0.1), donate_argnums=0)


def test_ema_off_holds_no_copy():
    state = _state(None)
    assert state.ema_params is None and state.ema_batch_stats is None


def test_one_jitted_step_updates_params_and_ema(step_fn, ema_cfg):
    state = _state(ema_cfg)
    params0 = jax.tree.map(np.asarray, state.params)
    state, metrics = step_fn(state, _batch(0))
    assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))
    assert _max_abs_diff(state.params, params0) > 0  # the optimizer moved the weights
    assert _max_abs_diff(ema.tree(state.ema_params), state.params) == 0  # timm: the first update is a copy
    assert _max_abs_diff(ema.tree(state.ema_batch_stats), state.batch_stats) == 0
    ema_before = jax.tree.map(np.asarray, ema.tree(state.ema_params))
    stats_before = jax.tree.map(np.asarray, ema.tree(state.ema_batch_stats))
    state, _ = step_fn(state, _batch(1))
    expected = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p), ema_before, state.params)
    assert _max_abs_diff(ema.tree(state.ema_params), expected) < 1e-6
    expected_stats = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * np.asarray(p), stats_before, state.batch_stats)
    assert _max_abs_diff(ema.tree(state.ema_batch_stats), expected_stats) < 1e-5
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.ema_params))
    assert len(jax.tree.leaves(state.ema_params)) == 1  # one buffer: one dispatch argument


def test_step_is_compiled_once_and_donates(step_fn, ema_cfg):
    state = _state(ema_cfg)  # a new model and optimizer: a new static part of the state, one compile
    compiled_before = step_fn._cache_size()
    state, _ = step_fn(state, _batch(0))
    old_params = state.params
    state, _ = step_fn(state, _batch(1))
    state, _ = step_fn(state, _batch(2))
    assert jax.tree.leaves(old_params)[0].is_deleted()  # the state was donated
    assert step_fn._cache_size() == compiled_before + 1  # the first step does not compile twice


def test_host_ema_is_the_device_ema_bit_for_bit_and_lives_in_pinned_host(step_fn, ema_cfg):
    device_state = _state(ema_cfg)
    host_state = offload.place_state(_state(ema_cfg), 'host')
    before = host_state.ema_params
    stepper = offload.build_step(functools.partial(train_step, smoothing=0.1), ema_cfg, 'host')
    for i in range(3):
        device_state, _ = step_fn(device_state, _batch(i))
        host_state, _ = stepper(host_state, _batch(i), i + 1)
        assert stepper.pending is not None  # the average runs in the worker while the next step is dispatched
    assert host_state.ema_params is before  # the state's EMA is the one of the last flush
    host_state = stepper.flush(host_state, 3)
    assert offload.memory_kinds((host_state.ema_params, host_state.ema_batch_stats)) == {'pinned_host'}
    assert offload.memory_kinds(host_state.params) == {'device'}
    for host, device in zip(
        jax.device_get((host_state.ema_params, host_state.ema_batch_stats)),
        (device_state.ema_params, device_state.ema_batch_stats),
    ):
        assert np.array_equal(host.flat, np.asarray(device.flat))  # the same lerp (a fused multiply-add)
    assert len(jax.tree.leaves(host_state.ema_params)) == 1  # one buffer: one device->host copy per update
    assert stepper.flush(host_state, 3) is host_state  # nothing pending any more


def test_checkpoint_without_ema_restores_into_ema_run(tmp_path, step_fn):
    state = _state(None)
    plain_step = jax.jit(lambda s, b: train_step(s, b, None, 0.1), donate_argnums=0)
    state, _ = plain_step(state, _batch(0))
    manager = checkpoint.open_manager(tmp_path / 'checkpoints')
    meta = dict(model='resnet18', num_classes=3, img_size=IMG, ema=None, epoch=0, position=0)
    step_dir = checkpoint.save(manager, state, meta, score=1.0)
    manager.close()
    assert checkpoint.resolve(tmp_path) == step_dir
    assert checkpoint.resolve(tmp_path / 'checkpoints' / 'best') == step_dir
    fresh = _state(ema.EmaConfig(decay=0.9), seed=1)
    restored = restore_state(step_dir, fresh)
    assert int(restored.step) == 1
    assert _max_abs_diff(restored.params, state.params) == 0
    assert _max_abs_diff(ema.tree(restored.ema_params), state.params) == 0  # EMA starts from the raw weights
    assert _max_abs_diff(ema.tree(restored.ema_batch_stats), state.batch_stats) == 0
    assert _max_abs_diff(restored.opt_state, state.opt_state) == 0
    restored, _ = step_fn(restored, _batch(1))  # and it trains on
    assert int(restored.step) == 2


def _image_folder(root, classes=('cat', 'dog'), per_class=10, splits=('train', 'validation')):
    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, size=(40, 40, 3)) + 150 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{i}.png')
    return root


TINY = [
    '--model',
    'resnet18',
    '--img-size',
    str(IMG),
    '-b',
    '4',
    '--epochs',
    '1',
    '--warmup-epochs',
    '0',
    '--lr',
    '0.01',
    '--log-interval',
    '2',
]


@pytest.mark.slow  # ~6-8 s each: the fast loop stays under 3 minutes
@pytest.mark.parametrize('force_cpu', [False, True])
def test_cli_end_to_end_run_folder(tmp_path, capsys, force_cpu):
    data = _image_folder(tmp_path / 'ds')
    argv = [
        str(data),
        *TINY,
        '--num-classes',
        '2',
        '--model-ema',
        '--model-ema-decay',
        '0.99',
        '--output',
        str(tmp_path / 'out'),
        '--experiment',
        'tiny',
    ]
    extra = (
        ['--model-ema-force-cpu', '--model-ema-update-every', '3']
        if force_cpu
        else ['-b', '2', '--grad-accum-steps', '2', '--reprob', '0.5']
    )  # 4 rows per update either way
    if not force_cpu:  # an unreadable image: skipped in place (its slot takes the next image), counted
        (data / 'train' / 'cat' / '3x.png').write_bytes(b'not a png')
    assert main(argv + extra) == 0
    captured = capsys.readouterr()
    run = tmp_path / 'out' / 'tiny'
    assert f'Run folder: {run}' in captured.err and captured.out.startswith('--result\n')  # the log on stderr
    results = json.loads((run / 'results.json').read_text())
    assert set(results) == {'best_metric', 'best_epoch', 'final', 'ema'}
    assert results['ema']['decay'] == 0.99 and results['ema']['force_cpu'] == force_cpu
    with (run / 'summary.csv').open() as f:
        rows = list(csv.DictReader(f))
    _check_timm_output(parse_timm_train(captured.err, captured.out), rows, results)
    assert tuple(rows[0]) == reporting.SUMMARY_COLUMNS and len(rows) == 1
    assert rows[0]['eval_top1'] == rows[0]['ema_eval_top1'] != ''  # the host EMA is validated too
    assert 0 <= float(rows[0]['raw_eval_top1']) <= 100
    assert (run / 'metrics.png').stat().st_size > 1000
    assert list((run / 'tensorboard').glob('events.out.tfevents.*'))
    assert (run / 'args.yaml').exists()
    step_dir = checkpoint.resolve(run)
    meta = checkpoint.read_metadata(step_dir)
    assert meta['model'] == 'resnet18' and meta['num_classes'] == 2 and meta['img_size'] == IMG
    assert meta['ema']['decay'] == 0.99 and meta['epoch'] == 0
    if not force_cpu:
        from jax_ema import data as data_lib

        train_ds, _ = data_lib.load_datasets(data_lib.DataConfig(data_dir=str(data)))
        used = data_lib.epoch_order(42, 0, train_ds.num_examples)[: 5 * 4]  # 5 updates of 4 rows
        assert meta['unreadable_images'] == int(train_ds.paths.index(str(data / 'train' / 'cat' / '3x.png')) in used)
    tree = checkpoint.restore_tree(step_dir)
    assert {'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'step'} <= set(tree)


def _check_timm_output(timm, rows, results):
    """What a script written for timm's train.py reads from our run: 20 images, 4 per update, --log-interval 2."""
    row = rows[0]
    assert [(t['epoch'], t['update'], t['updates']) for t in timm['train']] == [(0, 1, 5), (0, 3, 5), (0, 4, 5)]
    assert timm['train'][-1]['percent'] == 100 and timm['train'][-1]['lr'] == pytest.approx(0.01)
    assert timm['train'][-1]['loss_avg'] == pytest.approx(float(row['train_loss']), rel=5e-3)  # 3 digits
    assert timm['train'][-1]['rate'] == pytest.approx(4 / timm['train'][-1]['time'], rel=1e-2)  # 4 images an update
    assert set(timm['test']) == {'Test', 'Test (EMA)'}
    for name, prefix in (('Test', 'raw_eval'), ('Test (EMA)', 'eval')):
        last = timm['test'][name][-1]  # the epoch's last batch: the averages over the split
        assert last['batch'] == last['last'] and [t['batch'] for t in timm['test'][name]][0] == 0
        for key in ('loss', 'top1', 'top5'):
            assert last[f'{key}_avg'] == pytest.approx(float(row[f'{prefix}_{key}']), abs=1e-3)
    assert timm['best'] == (pytest.approx(results['best_metric'], abs=1e-9), results['best_epoch'])
    validation = {key: float(row[f'eval_{key}']) for key in ('loss', 'top1', 'top5')}
    assert timm['result'] == [{'epoch': 0, 'train': {'loss': float(row['train_loss'])}, 'validation': validation}]


def test_existing_run_folder_is_never_overwritten(tmp_path):
    first = reporting.make_run_dir(str(tmp_path), 'exp', 'resnet18', 32)
    second = reporting.make_run_dir(str(tmp_path), 'exp', 'resnet18', 32)
    assert first.name == 'exp' and second.name == 'exp-1'


def _error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    return error_line(err)


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    out = ['--output', str(tmp_path / 'out')]
    assert 'does not exist' in _error_line(capsys, [str(tmp_path / 'missing'), *TINY, *out])
    data = _image_folder(tmp_path / 'ds')
    assert '3' in _error_line(capsys, [str(data), *TINY, '--num-classes', '3', *out])
    for bad in ('1.5', '-0.1'):
        assert 'outside [0, 1]' in _error_line(capsys, [str(data), *TINY, '--model-ema-decay', bad, *out])
    assert 'resnet18' in _error_line(capsys, [str(data), *TINY, '--model', 'resnet7', *out])
    assert 'not one of cpu, cuda, gpu, tpu' in _error_line(capsys, [str(data), *TINY, '--device', 'mps', *out])
    assert '--device tpu: JAX' in _error_line(capsys, [str(data), *TINY, '--device', 'tpu', *out])  # no TPU here
    missing = str(tmp_path / 'weights.safetensors')
    assert missing in _error_line(capsys, [str(data), *TINY, '--initial-checkpoint', missing, *out])
    (data / 'train' / 'bird').mkdir()
    assert 'bird' in _error_line(capsys, [str(data), *TINY, *out])
    (data / 'train' / 'bird').rmdir()
    (data / 'train' / 'cat' / 'broken.png').write_bytes(b'not a png')
    assert 'broken.png' in _error_line(capsys, [str(data), *TINY, '--verify-images', *out])
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())


def test_host_step_updates_the_ema_every_k_and_flushes_what_is_pending():
    cfg = ema.EmaConfig(decay=0.9, update_every=3)
    plain_step = jax.jit(lambda s, b: train_step(s, b, None, 0.1), donate_argnums=0)
    stepper = offload.build_step(functools.partial(train_step, smoothing=0.1), cfg, 'host')
    state = offload.place_state(_state(cfg), 'host')
    manual = _state(cfg)
    ema_p, ema_s = manual.ema_params, manual.ema_batch_stats
    manual = manual.replace(ema_params=None, ema_batch_stats=None)
    update = jax.jit(functools.partial(ema.update, cfg))  # jitted: the same fused multiply-add as the host's
    for count in range(1, 6):
        state, _ = stepper(state, _batch(count), count)
        assert (stepper.pending is not None) == (count == 3)  # updates 3 only: every 3
        manual, _ = plain_step(manual, _batch(count))
        if count == 3:
            ema_p, ema_s = update(ema_p, ema_s, manual.params, manual.batch_stats, 3, 3)
            state = stepper.flush(state, 3)  # as before a snapshot: nothing pending but the update in flight
            assert np.array_equal(jax.device_get(state.ema_params.flat), np.asarray(ema_p.flat))
    state = stepper.flush(state, 5)  # as before evaluation / saving: updates 4 and 5 folded in at once
    ema_p, ema_s = update(ema_p, ema_s, manual.params, manual.batch_stats, 5, 2)
    assert np.array_equal(jax.device_get(state.ema_params.flat), np.asarray(ema_p.flat))
    assert np.array_equal(jax.device_get(state.ema_batch_stats.flat), np.asarray(ema_s.flat))
    assert offload.memory_kinds((state.ema_params, state.ema_batch_stats)) == {'pinned_host'}
    assert stepper.flush(state, 5) is state  # nothing pending any more


def test_host_step_adopts_a_state_it_did_not_make():
    """A state whose EMA the step did not hand out (a restored one) is averaged from its own EMA."""
    cfg = ema.EmaConfig(decay=0.5)
    stepper = offload.build_step(functools.partial(train_step, smoothing=0.1), cfg, 'host')
    first = offload.place_state(_state(cfg, seed=0), 'host')
    first, _ = stepper(first, _batch(0), 1)
    first = stepper.flush(first, 1)
    other = offload.place_state(_state(cfg, seed=1), 'host')
    start = jax.device_get(other.ema_params.flat)
    other, _ = stepper(other, _batch(1), 2)
    other = stepper.flush(other, 2)
    new = ema.init(other.params).flat
    expected = start + np.float32(0.5) * (np.asarray(new) - start)  # seed 1's EMA moved, not seed 0's
    assert np.allclose(jax.device_get(other.ema_params.flat), expected, rtol=0, atol=1e-6)
    assert not np.allclose(jax.device_get(first.ema_params.flat), jax.device_get(other.ema_params.flat))


def test_grad_accumulation_averages_micro_batches_and_updates_the_ema_once_per_update():
    cfg = ema.EmaConfig(decay=0.9)
    accumulate = jax.jit(lambda s, b: train_step(s, b, cfg, 0.1, accum_steps=2))
    state, batch = _state(cfg), _batch(0, n=8)

    def grads_of(micro):  # train-mode BatchNorm normalises with the micro-batch's own statistics
        def loss(params):
            logits = state.apply_fn(
                {'params': params, 'batch_stats': state.batch_stats},
                micro['image'],
                train=True,
                mutable=['batch_stats'],
            )[0]
            return losses.cross_entropy(logits, micro['label'], 0.1)

        return jax.grad(loss)(state.params)

    halves = [jax.tree.map(lambda x: x[:4], batch), jax.tree.map(lambda x: x[4:], batch)]
    mean = jax.tree.map(lambda a, b: (a + b) / 2, grads_of(halves[0]), grads_of(halves[1]))
    expected = state.apply_gradients(grads=mean)
    first, _ = accumulate(state, batch)
    assert int(first.step) == 1  # one optimizer update, not two
    assert _max_abs_diff(first.params, expected.params) < 1e-6
    assert _max_abs_diff(ema.tree(first.ema_params), first.params) == 0  # EMA step 1 (a copy), not step 2
    second, _ = accumulate(first, _batch(1, n=8))
    assert int(second.step) == 2
    blended = jax.tree.map(
        lambda e, p: 0.9 * np.asarray(e) + 0.1 * np.asarray(p), ema.tree(first.ema_params), second.params
    )
    assert _max_abs_diff(ema.tree(second.ema_params), blended) < 1e-6  # one EMA update per optimizer update


@pytest.mark.slow
def test_host_ema_equals_the_device_ema_for_power_emas_warmup_and_every_k():
    """Every EMA option through the host placement: a stack of a warmup decay and a power EMA, statistics
    copied, updated every 2 updates (a flush folding in a gap of 1), bit for bit the device placement's."""
    cfg = ema.EmaConfig(decay=0.9, use_warmup=True, stds=(0.1,), exclude_buffers=True, update_every=2)
    built = {w: offload.build_step(functools.partial(train_step, smoothing=0.1), cfg, w) for w in ('device', 'host')}
    states = {w: offload.place_state(_state(cfg), w) for w in built}
    for count in range(1, 4):
        states = {w: built[w](s, _batch(count), count)[0] for w, s in states.items()}
    states = {w: built[w].flush(s, 3) for w, s in states.items()}
    host, device = (jax.device_get((states[w].ema_params, states[w].ema_batch_stats)) for w in ('host', 'device'))
    for h, d in zip(host, device):
        assert h.flat.shape[0] == 2 and np.array_equal(h.flat, d.flat)
    assert np.array_equal(host[1].flat[1], jax.device_get(ema.init(states['host'].batch_stats).flat))  # copied
