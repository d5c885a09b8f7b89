"""mixup.py, losses.of_config and the new flags' checks (the formulas are compared with timm's in
parity_tests/test_recipe_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ema import losses, mixup
from jax_ema.config import parse_args
from jax_ema.errors import UserError

CFG = mixup.MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, rows=4, num_classes=3, label_smoothing=0.1)


def _batch(n=8):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(n, 8, 8, 3)), jnp.float32), jnp.arange(n) % 3


def test_draws_are_a_function_of_seed_and_update():
    x, y = _batch()
    a = mixup.apply(CFG, mixup.update_key(0, 5), 5, x, y)
    b = mixup.apply(CFG, mixup.update_key(0, 5), 5, x, y)
    c = mixup.apply(CFG, mixup.update_key(0, 6), 6, x, y)
    d = mixup.apply(CFG, mixup.update_key(1, 5), 5, x, y)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[1], d[1])


def test_each_loader_batch_is_mixed_on_its_own():
    x, y = _batch()
    _, targets = mixup.apply(CFG, mixup.update_key(0, 0), 0, x, y)
    np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)
    own = losses.smoothed_one_hot(y, 3, 0.1)
    lam = [float((targets[i] * own[i]).sum() / (own[i] * own[i]).sum()) for i in (0, 4)]
    assert lam[0] != lam[1]  # batch mode: one draw per loader batch of 4 rows, two loader batches


def test_mixup_off_epoch_stops_mixing():
    x, y = _batch()
    cfg = mixup.MixupConfig(mixup_alpha=1.0, rows=8, num_classes=3, off_update=10)
    mixed, targets = mixup.apply(cfg, mixup.update_key(0, 10), 10, x, y)
    assert np.array_equal(mixed, x)
    np.testing.assert_allclose(targets, losses.smoothed_one_hot(y, 3, 0.1), rtol=1e-6)
    mixed, _ = mixup.apply(cfg, mixup.update_key(0, 9), 9, x, y)
    assert not np.array_equal(mixed, x)


def test_draws_have_timms_distributions():
    cfg = mixup.MixupConfig(mixup_alpha=0.5, cutmix_alpha=1.0, switch_prob=0.3, prob=0.6, mode='elem')
    raw = mixup.random_draws(cfg, jax.random.PRNGKey(0), 20000, 32, 32)
    lam, cut = (np.asarray(a) for a in mixup.params(cfg, raw))
    assert abs((lam < 1).mean() - 0.6) < 0.02  # applied with prob
    assert abs(cut.mean() - 0.6 * 0.3) < 0.02  # cutmix with switch_prob, when applied
    assert abs(np.asarray(raw.lam_mix).mean() - 0.5) < 0.01  # Beta(a, a) has mean 1/2
    assert abs(np.asarray(raw.lam_mix).var() - 1 / (4 * (2 * 0.5 + 1))) < 0.01  # and variance 1/(4(2a+1))


@pytest.mark.parametrize(
    'argv, kind',
    [
        ([], losses.LossConfig('ce', 0.1)),
        (['--smoothing', '0'], losses.LossConfig('ce', 0.0)),
        (['--bce-loss'], losses.LossConfig('bce', 0.1)),
        (['--bce-loss', '--smoothing', '0'], losses.LossConfig('ce', 0.0)),  # timm's quirk: plain CE
        (['--mixup', '0.2'], losses.LossConfig('soft_ce')),
        (['--cutmix-minmax', '0.2', '0.8', '--bce-loss', '--bce-sum'], losses.LossConfig('bce', sum_classes=True)),
    ],
)
def test_the_loss_is_chosen_as_timm_chooses_it(argv, kind):
    assert losses.of_config(parse_args(argv)) == kind


@pytest.mark.parametrize(
    'argv, words',
    [
        (['--mixup', '0.2', '-b', '5'], '-b must be even'),
        (['--cutmix-minmax', '0.2'], '--cutmix-minmax takes MIN MAX'),
        (['--mixup-prob', '1.5'], '--mixup-prob must be in'),
        (['--mixup-mode', 'row'], 'invalid choice'),
        (['--clip-mode', 'l1'], 'invalid choice'),
        (['--clip-grad', '-1'], '--clip-grad must be >= 0'),
    ],
)
def test_bad_mixup_and_clip_flags_are_one_line(argv, words):
    with pytest.raises(UserError, match=words):
        parse_args(argv)
