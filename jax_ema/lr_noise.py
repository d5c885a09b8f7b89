"""timm's learning-rate noise (`--lr-noise`), reproduced bit for bit on the host with numpy.

timm's `Scheduler._calculate_noise(t)` seeds a fresh `torch.Generator` with `noise_seed + t` and draws
`torch.randn(1)` (float32) times `noise_std` until its magnitude is below `noise_pct`; the lr at t becomes
`lr + lr * noise`. torch's CPU generator is a 32-bit Mersenne Twister (seeded with `init_genrand`), a double
uniform takes the low 53 bits of two draws (first draw high), and a normal is Box-Muller on two uniforms,
`sqrt(-2 log1p(-u2)) * cos(2 pi u1)`, with the `sin` twin kept for the next draw. Here all seeds are
generated at once, vectorised across t.
"""

import math
from collections.abc import Sequence

import numpy as np

from jax_ema.errors import UserError

_N, _M = 624, 397
_UPPER, _LOWER, _MATRIX_A = np.uint32(0x80000000), np.uint32(0x7FFFFFFF), np.uint32(0x9908B0DF)
_CHUNK = 16384  # seeds per batch (a 624-word state each)


def _seeded(seeds: np.ndarray) -> np.ndarray:
    """init_genrand: state[0] = seed, state[j] = 1812433253 (s ^ (s >> 30)) + j, modulo 2^32; (seeds, 624)."""
    words = np.empty((_N, len(seeds)), np.uint32)  # filled word by word: contiguous rows
    words[0] = seeds
    for j in range(1, _N):
        words[j] = np.uint32(1812433253) * (words[j - 1] ^ (words[j - 1] >> np.uint32(30))) + np.uint32(j)
    return words.T


def _mix(word, next_word, far):
    """One word of Mersenne Twister's regeneration from state words i, i + 1 and i + 397."""
    y = (word & _UPPER) | (next_word & _LOWER)
    return far ^ (y >> np.uint32(1)) ^ ((y & np.uint32(1)) * _MATRIX_A)


def _twisted(state: np.ndarray) -> np.ndarray:
    """The next 624 words of state, in three blocks (later words use earlier new ones)."""
    new = np.empty_like(state)
    k = _N - _M  # 227
    new[:, :k] = _mix(state[:, :k], state[:, 1 : k + 1], state[:, _M:])
    new[:, k : 2 * k] = _mix(state[:, k : 2 * k], state[:, k + 1 : 2 * k + 1], new[:, :k])
    new[:, 2 * k : _N - 1] = _mix(state[:, 2 * k : _N - 1], state[:, 2 * k + 1 :], new[:, k : _N - 1 - k])
    new[:, _N - 1] = _mix(state[:, _N - 1], new[:, 0], new[:, _M - 1])
    return new


def _tempered(state: np.ndarray) -> np.ndarray:
    y = state ^ (state >> np.uint32(11))
    y = y ^ ((y << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    return y ^ (y >> np.uint32(18))


def _normals(words: np.ndarray) -> np.ndarray:
    """(seeds, 4k) uint32 draws -> (seeds, 2k) torch.randn values (float32, returned as float64)."""
    high, low = words[:, 0::2].astype(np.uint64), words[:, 1::2].astype(np.uint64)
    uniform = (((high & np.uint64((1 << 21) - 1)) << np.uint64(32)) | low).astype(np.float64) * 2.0**-53
    u1, u2 = uniform[:, 0::2], uniform[:, 1::2]
    radius, theta = np.sqrt(-2.0 * np.log1p(-u2)), 2.0 * np.pi * u1
    pairs = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=-1)
    return pairs.reshape(len(words), -1).astype(np.float32).astype(np.float64)


def _first_accepted(draws: np.ndarray, pct: float) -> np.ndarray:
    """Per row, the first draw with |draw| < pct (nan where none is)."""
    accepted = np.abs(draws) < pct
    first = draws[np.arange(len(draws)), accepted.argmax(axis=1)]
    return np.where(accepted.any(axis=1), first, np.nan)


def noise(ts: np.ndarray, seed: int, pct: float, std: float) -> np.ndarray:
    """timm's `_calculate_noise(t)` (noise_type 'normal') for each t in `ts`, float64."""
    ts = np.asarray(ts, np.int64)
    out = np.empty(len(ts), np.float64)
    for start in range(0, len(ts), _CHUNK):
        seeded = _seeded(((seed + ts[start : start + _CHUNK]) % 2**32).astype(np.uint32))
        # Most t keep one of their first 16 normals: those need only the first 32 words of the first twist.
        first_words = _mix(seeded[:, :32], seeded[:, 1:33], seeded[:, _M : _M + 32])
        result = _first_accepted(_normals(_tempered(first_words)) * std, pct)
        pending = np.flatnonzero(np.isnan(result))
        state = seeded[pending]
        while len(pending):  # the rest: whole twists, 312 normals each, until one is kept
            state = _twisted(state)
            kept = _first_accepted(_normals(_tempered(state)) * std, pct)
            result[pending] = kept
            done = ~np.isnan(kept)
            pending, state = pending[~done], state[~done]
        out[start : start + len(result)] = result
    return out


def check(noise_range: Sequence[float] | None, pct: float, std: float) -> None:
    """One-line UserErrors for values timm would take but that cannot be meant (or would hang it)."""
    if noise_range is not None:
        values = [float(v) for v in noise_range]
        if len(values) not in (1, 2) or any(not v >= 0 for v in values):
            raise UserError(
                f'--lr-noise takes one or two fractions of the schedule (>= 0), e.g. 0.42 0.9; got {list(noise_range)}'
            )
        if len(values) == 2 and values[0] >= values[1]:
            raise UserError(
                f'--lr-noise {values[0]} {values[1]}: the noise would never be on; give the start '
                f'first and the end after it, e.g. 0.42 0.9'
            )
    if not pct > 0:
        raise UserError(f'--lr-noise-pct must be > 0 (timm would redraw forever), got {pct}')
    if not std >= 0:
        raise UserError(f'--lr-noise-std must be >= 0, got {std}')


def noise_window(noise_range: Sequence[float] | None, t_initial: int, t_max: int) -> tuple[int, int]:
    """Integer t in [start, stop) get noise, as timm's `_is_apply_noise` with `noise_range_t` =
    fractions x t_initial: two values -> lo <= t < hi, one value -> t >= lo (cut at t_max)."""
    if noise_range is None:
        return 0, 0
    start = math.ceil(float(noise_range[0]) * t_initial)
    stop = math.ceil(float(noise_range[1]) * t_initial) if len(noise_range) == 2 else t_max + 1
    return start, max(start, min(stop, t_max + 1))
