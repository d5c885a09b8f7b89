"""Power-function EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", EDM2): an average of the weights so far whose profile is a power of time.

After t optimizer updates the EMA weights update i (1 <= i <= t) by

    w_i = (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1)      (~ (gamma+1) i^gamma / t^(gamma+1))

which is what the update ema <- ema + (1 - beta) * (new - ema) gives with

    beta(t) = (1 - gap/t)^(gamma+1)

where t is the update count AFTER this update and gap the updates since the previous EMA update (1,
or K with update-every-K, fewer for a flush): the products of the betas telescope to (t_prev/t)^(gamma+1),
so an EMA updated every K steps with the exact gap equals the every-step one on weights that are
constant between its updates. Using gap = 1 there (beta = (1 - 1/t)^(gamma+1) at every K-th step, a
known slip of other ports) divides gamma+1 by K in effect: a far wider profile, too much weight on early
weights (tests/test_power_ema.py shows it).
The first update (t = gap) has beta = 0: a plain copy.

Convention checked against the EDM2 reference (NVlabs/edm2 training/training_loop.py and phema.py):
the loop increments `cur_nimg += batch_size` and then calls `update(cur_nimg, batch_size)` with
beta = (1 - batch_size / cur_nimg)^(gamma+1); that is t_next = images seen after the update and
t_delta = the images since the last update. With a fixed batch size the ratio equals ours in updates.
Snapshots are taken at t (their "ofs") = the count after the last update folded in.

The width: sigma_rel, the profile's standard deviation relative to t, of the continuous profile
(gamma+1) tau^gamma / t^(gamma+1) on [0, t]:

    sigma_rel(gamma)^2 = (gamma+1) / ((gamma+2)^2 (gamma+3))

and back, gamma from sigma_rel, as the largest real root of the cubic that this is rearranged into:

    gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0

(the paper's sigma_rel 0.05 <-> gamma 16.97, 0.10 <-> 6.94). gamma >= 0 needs sigma_rel <= 1/sqrt(12),
the uniform average of all the weights so far (gamma = 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema.errors import UserError

MAX_STD = 1.0 / math.sqrt(12.0)  # gamma = 0: the plain average of every weight so far


def std_from_gamma(gamma):
    """sigma_rel of the power-function profile of exponent `gamma` (float64, scalars or arrays)."""
    gamma = np.float64(gamma)
    return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_std(std: float) -> float:
    """The exponent gamma >= 0 whose profile has relative width `std` (the real root of the cubic)."""
    std = float(std)
    if not 0.0 < std <= MAX_STD:
        raise UserError(
            f'sigma_rel {std:g} is outside (0, {MAX_STD:.4f}]; use a relative width like 0.05 '
            'or 0.10 (0.2887 is the plain average of all the weights)'
        )
    inv = std**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    real = roots.real[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots.real))]
    gamma = max(float(real.max()), 0.0)
    for _ in range(3):  # polish the root with Newton steps on the cubic (np.roots is ~1e-12 relative)
        value = ((gamma + 7.0) * gamma + 16.0 - inv) * gamma + 12.0 - inv
        slope = (3.0 * gamma + 14.0) * gamma + 16.0 - inv
        if slope != 0.0:
            gamma = max(gamma - value / slope, 0.0)
    return gamma


def step_size(gamma: float, step, gap=1, dtype=jnp.float32) -> jax.Array:
    """`1 - beta` = 1 - (1 - gap/t)^(gamma+1) after update `step` = t, folding in `gap` updates.

    Computed as -expm1((gamma+1) * log1p(-gap/t)): no cancellation where beta is near 1 (the
    naive form loses ~1e-3 relative at t = 1e5 in float32). gap = 0 gives 0 (no change), gap = t 1 (copy).
    """
    t = jnp.asarray(step).astype(dtype)
    gap = jnp.asarray(gap).astype(dtype)
    ratio = jnp.clip(gap / jnp.maximum(t, 1.0), 0.0, 1.0)
    return -jnp.expm1(np.float64(gamma + 1.0).astype(dtype) * jnp.log1p(-ratio))


def profile(gamma: float, t: int, length: int | None = None) -> np.ndarray:
    """The weights w_1..w_length (float64) of the power EMA after t updates (zero past t); they sum to 1."""
    i = np.arange(1, (length or t) + 1, dtype=np.float64)
    a, b = np.minimum(i, t) / t, np.minimum(i - 1, t) / t
    return a ** (gamma + 1) - b ** (gamma + 1)
