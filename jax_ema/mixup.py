"""Mixup / CutMix with timm's semantics (timm.data.Mixup), on the device inside the jitted step.

Split as timm's class is, so that the draws can be injected (parity_tests/test_mixup_parity.py):
  `draw(cfg, key, rows, height, width)` -> Draws: per row of one loader batch, lambda (after timm's box
      correction), whether it is cut, and its box (top, bottom, left, right): `random_draws` (jax.random, the
      numbers timm's numpy calls draw) then `from_raw` (timm's arithmetic on them);
  `mix_images(x, draws)` -> each row i mixed with row n-1-i (timm's flip): lam x_i + (1 - lam) x_j, or x_j
      pasted into row i's box;
  `mix_targets(labels, lam, num_classes, smoothing)` -> timm's mixup_target: smoothed one-hot, mixed likewise.
`apply(cfg, key, update, images, labels)` does the three per loader batch of `cfg.rows` rows (timm mixes
each GPU's batch on its own), the draws a function of (seed, update) through `key`.
Modes (timm's --mixup-mode): 'batch' one draw for the batch, 'elem' one per row, 'pair' one per pair (i, n-1-i).
Images are mixed in normalised float space as timm's Mixup (--no-prefetcher); timm's default FastCollateMixup
mixes the uint8 images and rounds to integers, a difference below half a grey level.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_ema import losses

MODES = ('batch', 'pair', 'elem')


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """timm's Mixup arguments (train.py's mixup_args) and where the step applies them."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = 'batch'
    label_smoothing: float = 0.1
    off_update: int = 0  # --mixup-off-epoch x updates per epoch: no mixing from this update on (0: never off)
    rows: int = 0  # rows of one loader batch (timm's per-GPU batch); 0: the whole batch
    num_classes: int = 1000

    @property
    def cutmix_on(self) -> bool:
        return self.cutmix_alpha > 0 or self.cutmix_minmax is not None

    @property
    def beta_cutmix(self) -> float:
        return 1.0 if self.cutmix_minmax is not None else self.cutmix_alpha  # timm forces 1.0 under minmax


def of_config(config, updates_per_epoch: int, num_classes: int) -> MixupConfig | None:
    """The MixupConfig of a `config.Config`, or None when mixup and cutmix are off (timm's mixup_active)."""
    if not (config.mixup > 0 or config.cutmix > 0 or config.cutmix_minmax is not None):
        return None
    return MixupConfig(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        cutmix_minmax=tuple(config.cutmix_minmax) if config.cutmix_minmax is not None else None,
        prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob,
        mode=config.mixup_mode,
        label_smoothing=config.smoothing,
        off_update=config.mixup_off_epoch * updates_per_epoch,
        rows=config.batch_size,
        num_classes=num_classes,
    )


class Draws(NamedTuple):
    """Per row of a loader batch: lam (float), cut (bool: CutMix rather than mixup), box [4] ints
    (top, bottom, left, right; empty where not cut)."""

    lam: jax.Array
    cut: jax.Array
    box: jax.Array


class Raw(NamedTuple):
    """The random numbers of `count` draws, as timm's numpy calls take them: uniforms for 'apply' (< prob) and
    'switch' (< switch_prob), the two Beta lambdas, the box centre (cy, cx; rand_bbox), and under
    --cutmix-minmax the box size and corner (cut_h, cut_w, top, left; rand_bbox_minmax). All [count]."""

    apply_u: jax.Array
    switch_u: jax.Array
    lam_mix: jax.Array
    lam_cut: jax.Array
    cy: jax.Array
    cx: jax.Array
    cut_h: jax.Array
    cut_w: jax.Array
    top: jax.Array
    left: jax.Array


def random_draws(cfg: MixupConfig, key, count: int, height: int, width: int) -> Raw:
    """`count` draws from jax.random, distributed as timm's numpy draws."""
    keys = jax.random.split(key, 10)
    ones = jnp.ones(count)
    cut_h = cut_w = jnp.zeros(count, jnp.int32)
    if cfg.cutmix_minmax is not None:
        low, high = cfg.cutmix_minmax
        cut_h = jax.random.randint(keys[6], (count,), int(height * low), int(height * high))
        cut_w = jax.random.randint(keys[7], (count,), int(width * low), int(width * high))
    return Raw(
        apply_u=jax.random.uniform(keys[0], (count,)),
        switch_u=jax.random.uniform(keys[1], (count,)),
        lam_mix=jax.random.beta(keys[2], cfg.mixup_alpha, cfg.mixup_alpha, (count,)) if cfg.mixup_alpha else ones,
        lam_cut=jax.random.beta(keys[3], cfg.beta_cutmix, cfg.beta_cutmix, (count,)) if cfg.cutmix_on else ones,
        cy=jax.random.randint(keys[4], (count,), 0, height),
        cx=jax.random.randint(keys[5], (count,), 0, width),
        cut_h=cut_h,
        cut_w=cut_w,
        top=jax.random.randint(keys[8], (count,), 0, height - cut_h + 1),
        left=jax.random.randint(keys[9], (count,), 0, width - cut_w + 1),
    )


def params(cfg: MixupConfig, raw: Raw, enabled=True):
    """timm's _params_per_elem / _params_per_batch: (lam, cut) per draw; lam 1 where not applied."""
    if cfg.mixup_alpha > 0 and cfg.cutmix_on:
        cut = raw.switch_u < cfg.switch_prob
    else:
        cut = jnp.full(raw.apply_u.shape, cfg.cutmix_on)
    applied = (raw.apply_u < cfg.prob) & enabled
    lam = jnp.where(applied, jnp.where(cut, raw.lam_cut, raw.lam_mix), 1.0)
    return lam, cut & applied


def boxes(cfg: MixupConfig, raw: Raw, lam, height: int, width: int):
    """timm's rand_bbox (or rand_bbox_minmax) per draw: [count, 4] (top, bottom, left, right)."""
    if cfg.cutmix_minmax is not None:
        return jnp.stack([raw.top, raw.top + raw.cut_h, raw.left, raw.left + raw.cut_w], axis=-1)
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    return jnp.stack(
        [
            jnp.clip(raw.cy - cut_h // 2, 0, height),
            jnp.clip(raw.cy + (cut_h + 1) // 2, 0, height),
            jnp.clip(raw.cx - cut_w // 2, 0, width),
            jnp.clip(raw.cx + (cut_w + 1) // 2, 0, width),
        ],
        axis=-1,
    )


def corrected_lam(lam, cut, box, height: int, width: int):
    """timm's cutmix_bbox_and_lam correction (train.py keeps correct_lam=True): 1 - box area / image area."""
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    return jnp.where(cut, 1.0 - area / (height * width), lam)


def draw_count(cfg: MixupConfig, rows: int) -> int:
    return {'batch': 1, 'pair': rows // 2, 'elem': rows}[cfg.mode]


def from_raw(cfg: MixupConfig, raw: Raw, rows: int, height: int, width: int, enabled=True) -> Draws:
    """The Draws of one loader batch of `rows` rows from its random numbers, expanded to rows as cfg.mode says."""
    lam, cut = params(cfg, raw, enabled)
    box = jnp.where(cut[:, None], boxes(cfg, raw, lam, height, width), 0)
    lam = corrected_lam(lam, cut, box, height, width)
    count = lam.shape[0]
    if cfg.mode != 'batch':  # timm keeps per-row lambdas in a float32 array
        lam = lam.astype(jnp.float32)
    if cfg.mode == 'batch':
        expand = jnp.zeros(rows, jnp.int32)
    elif cfg.mode == 'pair':  # row j = n-1-i takes pair i's draw
        expand = jnp.concatenate([jnp.arange(count), jnp.arange(count)[::-1]])
    else:
        expand = jnp.arange(rows)
    return Draws(lam[expand], cut[expand], box[expand])


def draw(cfg: MixupConfig, key, rows: int, height: int, width: int, enabled=True) -> Draws:
    """The draws of one loader batch of `rows` rows (jax.random under `key`)."""
    raw = random_draws(cfg, key, draw_count(cfg, rows), height, width)
    return from_raw(cfg, raw, rows, height, width, enabled)


def mix_images(x, draws: Draws):
    """[n, H, W, C] images mixed as timm's Mixup: row i with row n-1-i (its mirror in the batch); 1 - lam in
    lam's dtype (timm: float32 per-row lambdas, a Python float for the batch's)."""
    partner = x[::-1]
    weight = lambda w: w.astype(x.dtype)[:, None, None, None]  # noqa: E731
    mixed = x * weight(draws.lam) + partner * weight(1 - draws.lam)
    rows = jnp.arange(x.shape[1])[None, :, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :, None]
    box = draws.box[:, :, None, None, None]
    inside = (rows >= box[:, 0]) & (rows < box[:, 1]) & (cols >= box[:, 2]) & (cols < box[:, 3])
    pasted = jnp.where(inside, partner, x)
    return jnp.where(draws.cut[:, None, None, None], pasted, mixed)


def mix_targets(labels, lam, num_classes: int, smoothing: float, dtype=jnp.float32):
    """timm's mixup_target: a float32 one-hot with off = s / C, on = 1 - s + off, mixed with the flipped
    batch's: y lam + y_flipped (1 - lam), lam and 1 - lam rounded to `dtype` (timm: float32 for a batch's
    Python float lam, the images' dtype for per-row lambdas)."""
    y1 = losses.smoothed_one_hot(labels, num_classes, smoothing, jnp.float32)
    lam = jnp.asarray(lam).reshape(-1, 1)
    lam = lam.astype(jnp.promote_types(lam.dtype, dtype))
    return y1 * lam.astype(dtype) + y1[::-1] * (1 - lam).astype(dtype)


def update_key(seed: int, update):
    """The key of optimizer update `update`'s draws: a stream of its own under `seed` (dropout and random
    erasing have theirs)."""
    return jax.random.fold_in(jax.random.split(jax.random.PRNGKey(seed), 3)[2], update)


def apply(cfg: MixupConfig, key, update, images, labels):
    """(mixed images, soft targets) of a batch: each loader batch of cfg.rows rows drawn on its own
    (key folded with its index), with no mixing from update cfg.off_update on."""
    n, height, width = images.shape[:3]
    rows = cfg.rows or n
    enabled = True if not cfg.off_update else update < cfg.off_update

    def one(chunk, x, y):
        draws = draw(cfg, jax.random.fold_in(key, chunk), rows, height, width, enabled)
        dtype = jnp.float32 if cfg.mode == 'batch' else images.dtype
        return mix_images(x, draws), mix_targets(y, draws.lam, cfg.num_classes, cfg.label_smoothing, dtype)

    split = lambda a: a.reshape(n // rows, rows, *a.shape[1:])  # noqa: E731
    mixed, targets = jax.vmap(one)(jnp.arange(n // rows), split(images), split(labels))
    return mixed.reshape(images.shape), targets.reshape(n, cfg.num_classes)
