"""Power-function EMA (EDM2): sigma_rel <-> gamma, the profile our update produces, the exact gap with
update-every-K, and float32 step sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ema import ema, power_ema
from jax_ema.errors import UserError

STDS = (0.05, 0.10)


@pytest.mark.parametrize('std, gamma', [(0.10, 6.94), (0.05, 16.97)])  # the values quoted in the EDM2 paper
def test_gamma_from_std_matches_the_paper(std, gamma):
    assert power_ema.gamma_from_std(std) == pytest.approx(gamma, abs=0.005)


def test_std_and_gamma_are_inverse():
    stds = np.linspace(0.005, power_ema.MAX_STD, 60)
    gammas = np.array([power_ema.gamma_from_std(s) for s in stds])
    assert np.all(np.diff(gammas) < 0) and gammas[-1] == 0.0  # narrower profile, larger exponent
    np.testing.assert_allclose(power_ema.std_from_gamma(gammas), stds, rtol=1e-12)


def test_std_from_gamma_is_the_profile_width():
    """sigma_rel(gamma) is the std, relative to t, of the density (g+1) x^g on [0, 1] (numeric integral)."""
    x = (np.arange(200_000) + 0.5) / 200_000
    for gamma in (0.0, 2.5, 6.94, 30.0):
        density = (gamma + 1) * x**gamma / 200_000
        mean = np.sum(density * x)
        assert np.sqrt(np.sum(density * (x - mean) ** 2)) == pytest.approx(power_ema.std_from_gamma(gamma), rel=1e-6)


@pytest.mark.parametrize('std', [0.0, -0.1, 0.29, 1.0])
def test_std_outside_range_is_a_user_error(std):
    with pytest.raises(UserError, match=r'sigma_rel .* is outside \(0, 0.2887\]'):
        power_ema.gamma_from_std(std)


def run_power_emas(news, steps, gaps, x64):
    """The stacked EMA (decay 0.9 + the STDS power members) over `news` [T, n]: ema.update with the
    given update counts and gaps, in a jitted scan; returns the [T, 3, n] history of the stack."""
    cfg = ema.EmaConfig(decay=0.9, stds=STDS)
    with jax.enable_x64(x64):

        def body(stack, xs):
            new, step, gap = xs
            stack, _ = ema.update(cfg, stack, {}, new, {}, step, gap)
            return stack, stack.flat

        dtype = jnp.float64 if x64 else jnp.float32
        _, history = jax.lax.scan(
            body,
            ema.init(jnp.zeros(news.shape[1], dtype), members=3),
            (jnp.asarray(news, dtype), jnp.asarray(steps), jnp.asarray(gaps)),
        )
        return np.asarray(history, np.float64)


@pytest.mark.parametrize('x64, tol', [(True, 1e-12), (False, 2e-6)])
def test_update_gives_the_power_profile(x64, tol):
    """On one-hot weights (update i sets e_i) the EMA IS its averaging profile: it must be the power
    profile w_i = (i/t)^(g+1) - ((i-1)/t)^(g+1), at every t (this pins EDM2's t convention)."""
    t = 300
    history = run_power_emas(np.eye(t), np.arange(1, t + 1), np.ones(t, int), x64)
    for row, std in zip((1, 2), STDS):
        gamma = power_ema.gamma_from_std(std)
        for when in (1, 2, 50, t):
            want = power_ema.profile(gamma, when, t)
            assert np.max(np.abs(history[when - 1, row] - want)) <= tol * np.max(want)


@pytest.mark.parametrize('x64, tol', [(True, 1e-12), (False, 1e-5)])
def test_every_k_with_the_exact_gap_equals_every_step(x64, tol):
    """Weights constant between updates: an EMA updated every K (gap K, and a last flush of gap 3) equals
    the every-step EMA. Using gap 1 at every K-th update (the common slip) does not."""
    k, blocks, n = 8, 40, 64
    rng = np.random.default_rng(0)
    ends = np.r_[np.arange(k, k * blocks + 1, k), k * blocks + 3]  # updates every K, then a flush after 3
    values = rng.normal(size=(len(ends), n))
    every_step = np.repeat(values, np.diff(np.r_[0, ends]), axis=0)  # constant between the EMA's updates
    dense = run_power_emas(every_step, np.arange(1, ends[-1] + 1), np.ones(ends[-1], int), x64)[-1]
    sparse = run_power_emas(values, ends, np.diff(np.r_[0, ends]), x64)[-1]
    naive = run_power_emas(values, ends, np.ones(len(ends), int), x64)[-1]
    scale = np.max(np.abs(dense))
    assert np.max(np.abs(sparse[1:] - dense[1:])) <= tol * scale
    assert np.max(np.abs(naive[1:] - dense[1:])) > 1e-2 * scale


def test_float32_step_size_has_no_cancellation():
    """1 - beta at t = 1e5 in float32 within 1e-6 of float64; the naive 1 - (1 - gap/t)^(g+1) is not."""
    gamma = power_ema.gamma_from_std(0.10)
    for t, gap in ((100_000, 1), (100_000, 16), (3, 1), (16, 16)):
        exact = 1.0 - (1.0 - gap / t) ** (gamma + 1)
        with jax.enable_x64(False):
            ours = float(power_ema.step_size(gamma, t, gap, jnp.float32))
        assert abs(ours - exact) <= 1e-6 * exact
    naive = 1.0 - (np.float32(1.0) - np.float32(1 / 100_000)) ** np.float32(gamma + 1)
    exact = 1.0 - (1.0 - 1 / 100_000) ** (gamma + 1)
    assert abs(float(naive) - exact) > 1e-5 * exact
    with jax.enable_x64(False):
        assert float(power_ema.step_size(gamma, 10, 0)) == 0.0  # nothing pending: no change
        assert float(power_ema.step_size(gamma, 8, 8)) == 1.0  # the first update is a copy
