"""Post-hoc EMA: the closed-form profile inner products, reconstruction of a profile and of a tracked EMA
from float32 snapshots, float16 snapshots, the CLI's checkpoint through validate/export, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jax_ema import checkpoint, ema, optim, plot, posthoc, power_ema, reporting
from jax_ema.export import export
from jax_ema.models import create_model
from jax_ema.timm_io import variables_from_checkpoint
from jax_ema.train import create_train_state
from jax_ema.validate import validate
from read_only import read_only

STDS = (0.05, 0.10)
CFG = ema.EmaConfig(decay=0.999, stds=STDS)


def snapshot_run(run_dir, news, every, dtype='float32'):
    """Run the stacked EMA (CFG) over `news` [T, n] in a jitted scan and save a snapshot every `every`
    updates with posthoc.save_snapshot; returns the [T, 3, n] history of the stack."""
    with jax.enable_x64(False):

        def body(stack, xs):
            new, step = xs
            stack, _ = ema.update(CFG, stack, {}, new, {}, step)
            return stack, stack.flat

        start = ema.init(jnp.zeros(news.shape[1]), members=CFG.members)
        _, history = jax.lax.scan(body, start, (jnp.asarray(news, jnp.float32), jnp.arange(1, len(news) + 1)))
        no_stats = ema.init({}, members=CFG.members)
        for step in range(every, len(news) + 1, every):
            stack = ema.FlatTree(history[step - 1], start.others, start.spec)
            posthoc.save_snapshot(run_dir, step, CFG, stack, no_stats, dtype)
    return np.asarray(history)


def test_inner_products_match_the_discrete_profiles():
    """The closed form against T * sum_i w_a,i w_b,i of the exact discrete profiles at a large T."""
    big = 20_000
    for (ta, sa), (tb, sb) in [
        ((big, 0.05), (big, 0.10)),
        ((big // 2, 0.10), (big, 0.05)),
        ((big, 0.20), (big // 4, 0.07)),
        ((big // 3, 0.10), (big // 3, 0.10)),
    ]:
        ga, gb = power_ema.gamma_from_std(sa), power_ema.gamma_from_std(sb)
        discrete = big * np.sum(power_ema.profile(ga, ta, big) * power_ema.profile(gb, tb, big))
        assert posthoc.profile_inner_products(ta / big, ga, tb / big, gb) == pytest.approx(discrete, rel=2e-3)


def test_reconstructed_profile_matches_the_target(tmp_path):
    """One-hot weights (update i sets e_i): an EMA is its own averaging profile, so the reconstruction
    from 16 float32 snapshots of the 0.05 and 0.10 EMAs IS the reconstructed profile. Normalised to sum
    1, it is within 1e-3 of the 0.07 power profile (max abs); the nearest tracked EMA is not."""
    t, every = 512, 32
    history = snapshot_run(tmp_path, np.eye(t), every)
    result = posthoc.reconstruct(posthoc.list_snapshots(tmp_path), 0.07)
    assert result['step'] == t and len(result['snapshots']) == t // every == 16
    target = power_ema.profile(power_ema.gamma_from_std(0.07), t)
    got = result['params'] / np.sum(result['params'])
    assert np.max(np.abs(got - target)) <= 1e-3
    assert np.max(np.abs(got - target)) <= 1e-2 * np.max(target)  # 1 % of the peak
    for row in (1, 2):
        tracked = history[-1, row] / np.sum(history[-1, row])
        assert np.max(np.abs(tracked - target)) > 2e-3


def test_tracked_std_is_reconstructed(tmp_path):
    """Asking for a sigma_rel that was tracked returns that EMA (at the last and at an earlier snapshot)
    within 1e-4 x max|EMA|, on a random-walk weight trajectory, from 8 float32 snapshots."""
    rng = np.random.default_rng(0)
    news = np.cumsum(rng.normal(size=(400, 1000)), axis=0) * 0.01 + 1.0
    history = snapshot_run(tmp_path, news, 50)
    snapshots = posthoc.list_snapshots(tmp_path)
    for std, row in zip(STDS, (1, 2)):
        for step in (400, 200):
            got = posthoc.reconstruct(snapshots, std, step)['params']
            want = history[step - 1, row]
            assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_float16_snapshots_are_half_the_size(tmp_path):
    rng = np.random.default_rng(1)
    news = rng.normal(size=(64, 4000)) + 3.0
    snapshot_run(tmp_path / 'f32', news, 16, 'float32')
    history = snapshot_run(tmp_path / 'f16', news, 16, 'float16')
    f32, f16 = (posthoc.list_snapshots(tmp_path / d)[-1].path.stat().st_size for d in ('f32', 'f16'))
    assert f16 < 0.55 * f32
    got = posthoc.reconstruct(posthoc.list_snapshots(tmp_path / 'f16'), 0.10)['params']
    np.testing.assert_allclose(got, history[-1, 2], rtol=2e-3)  # float16 keeps ~3 digits


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A resnet18 (2 classes) run folder: one checkpoint at update 6, args.yaml, and snapshots of the
    stacked EMA every 2 updates over weights that drift from the initial ones."""
    root = tmp_path_factory.mktemp('posthoc')
    run_dir = root / 'run'
    model = create_model('resnet18', 2)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    state = create_train_state(model, optim.create_optimizer('sgd', lambda s: 0.1, 0.0, 0.9), variables, CFG)
    state = state.replace(
        ema_params=ema.init(state.params, CFG.members), ema_batch_stats=ema.init(state.batch_stats, CFG.members)
    )
    update = jax.jit(lambda s, p, st, step: ema.update(CFG, s[0], s[1], p, st, step))
    stacks = (state.ema_params, state.ema_batch_stats)
    for step in range(1, 7):
        drift = jax.tree.map(lambda x: x * (1.0 + 0.01 * step), (state.params, state.batch_stats))  # noqa: B023
        stacks = update(stacks, *drift, step)
        if step % 2 == 0:
            posthoc.save_snapshot(run_dir, step, CFG, *stacks)
    state = state.replace(
        step=jnp.array(6), params=drift[0], batch_stats=drift[1], ema_params=stacks[0], ema_batch_stats=stacks[1]
    )
    metadata = dict(
        model='resnet18', num_classes=2, img_size=32, opt='sgd', ema={'decay': 0.999}, epoch=0, position=6, metrics=None
    )
    with checkpoint.open_manager(run_dir / 'checkpoints') as manager:
        checkpoint.save(manager, state, metadata, score=1.0)
    (run_dir / 'args.yaml').write_text('val_split: validation\ntrain_split: train\ncrop_pct: 1.0\n')
    return run_dir, stacks


@pytest.mark.slow
def test_cli_writes_a_checkpoint_that_validates_and_exports_and_only_reads_the_run(run, tmp_path):
    """posthoc, validate, export and plot work on a read-only run folder (tests/read_only.py): they only read it."""
    run_dir, stacks = run
    out = tmp_path / 'out'
    row = reporting.summary_row(0, 1.0, 0.1, {'loss': 1.0, 'top1': 50.0, 'top5': 100.0}, None)
    reporting.write_summary(run_dir, [row])
    data = tmp_path / 'ds'
    for split in ('train', 'validation'):
        for c, name in enumerate(('cat', 'dog')):
            (data / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((32, 32, 3), 60 * c + 10 * i, np.uint8)).save(data / split / name / f'{i}.png')
    with read_only(run_dir):
        assert posthoc.main(['--run', str(run_dir), '--std', '0.10', '--out', str(out)]) == 0
        metadata, variables = variables_from_checkpoint(checkpoint.resolve(out), use_ema=True)
        assert metadata['ema']['posthoc'] and metadata['ema']['std'] == 0.10 and metadata['ema']['step'] == 6
        want = ema.tree(stacks[0], 2)  # the tracked 0.10 EMA
        scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(want))
        gap = max(
            float(np.max(np.abs(g - w))) for g, w in zip(jax.tree.leaves(variables['params']), jax.tree.leaves(want))
        )
        assert gap <= 1e-4 * scale
        done = export(out, tmp_path / 'm.safetensors', use_ema=True)
        assert done['model'] == 'resnet18' and (tmp_path / 'm.safetensors').stat().st_size > 40e6
        results = validate(out, data=data, use_ema=True, batch_size=4)
        assert results['weights'] == 'ema' and results['num_images'] == 4 and np.isfinite(results['loss'])
        assert validate(run_dir, data=data, batch_size=4)['num_images'] == 4
        assert plot.plot_runs([run_dir], tmp_path / 'runs.png').stat().st_size > 0
        with pytest.raises(OSError):
            (run_dir / 'probe').write_text('x')  # the folder really is read-only in this block


@pytest.mark.parametrize(
    'args, message',
    [
        (['--std', '0.5'], 'sigma_rel 0.5 is outside (0, 0.2887]'),
        (['--std', '0'], 'sigma_rel 0 is outside'),
        (['--std', '0.07', '--step', '5'], '--step 5 is not a snapshot step; use one of 2, 4, 6'),
    ],
)
def test_bad_input_is_one_line(run, tmp_path, capsys, args, message):
    assert posthoc.main(['--run', str(run[0]), '--out', str(tmp_path / 'o'), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and err.count('\n') == 1
    assert not (tmp_path / 'o').exists()


def test_no_snapshots_or_no_run_is_one_line(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    assert posthoc.main(['--run', str(tmp_path / 'empty'), '--std', '0.07', '--out', str(tmp_path / 'o')]) == 2
    assert 'no EMA snapshots in' in capsys.readouterr().err
    assert posthoc.main(['--run', str(tmp_path / 'none'), '--std', '0.07', '--out', str(tmp_path / 'o')]) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_existing_out_is_refused(run, tmp_path, capsys):
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'x').write_text('mine')
    assert posthoc.main(['--run', str(run[0]), '--std', '0.07', '--out', str(tmp_path / 'taken')]) == 2
    assert 'already exists' in capsys.readouterr().err
