"""RandAugment as timm builds it from `--aa rand-...` (timm.data.auto_augment), drawn with TF ops.

`parse` reads timm's config string; `rand_augment` applies the policy to one image: `num_layers`
times, an op is picked uniformly (with replacement; or by weight, without, for `tweights`) and, with
probability `prob`, applied at a magnitude drawn around `magnitude` (gaussian of std `magnitude_std`,
uniform in [0, magnitude] for mstd > 100), clipped to [0, mmax or 10]. Op arguments come from
timm's level functions; rotate, shear, translate and the `...Increasing` enhancements flip sign with
probability 1/2. Every draw is a TF stateless op of the image's key.

Cost: the layers are unrolled (no loop), each runs only its chosen op (one tf.switch_case whose last
branch is "not applied"), and the ops work in float32 arithmetic (image_ops.py); per image, on the
CPU, this costs about what timm's PIL ops do.
"""

import dataclasses
import functools
import math
import re

import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.data import image_ops
from jax_ema.errors import UserError

LEVEL_DENOM = 10.0  # timm's _LEVEL_DENOM: magnitude 10 = the full range of each op
TRANSLATE_PCT = 0.45  # timm's default translate_pct: TranslateXRel/YRel shift by up to 45 %
RAND_TRANSFORMS = (  # timm's _RAND_TRANSFORMS, in its order
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'Posterize',
    'Solarize',
    'SolarizeAdd',
    'Color',
    'Contrast',
    'Brightness',
    'Sharpness',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)
RAND_INCREASING_TRANSFORMS = (  # timm's _RAND_INCREASING_TRANSFORMS (`inc1`)
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'PosterizeIncreasing',
    'SolarizeIncreasing',
    'SolarizeAdd',
    'ColorIncreasing',
    'ContrastIncreasing',
    'BrightnessIncreasing',
    'SharpnessIncreasing',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)
RAND_WEIGHTED = {  # timm's _RAND_WEIGHTED_0 (`tweights`): relative choice weights
    'Rotate': 3,
    'ShearX': 2,
    'ShearY': 2,
    'TranslateXRel': 1,
    'TranslateYRel': 1,
    'ColorIncreasing': 0.25,
    'SharpnessIncreasing': 0.25,
    'AutoContrast': 0.25,
    'SolarizeIncreasing': 0.05,
    'SolarizeAdd': 0.05,
    'ContrastIncreasing': 0.05,
    'BrightnessIncreasing': 0.05,
    'Equalize': 0.05,
    'PosterizeIncreasing': 0.05,
    'Invert': 0.05,
}
GRAMMAR = (
    'rand[-mM][-nN][-mstdS][-mmaxX][-incI][-pP][-tweights], e.g. rand-m9-mstd0.5 '
    "(timm's RandAugment; AutoAugment, AugMix and other policies are not supported)"
)


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """One parsed `--aa rand-...`: timm's RandAugment(ops, num_layers, choice_weights) and op hparams."""

    ops: tuple = RAND_TRANSFORMS
    num_layers: int = 2
    magnitude: int = 10
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    magnitude_max: int | None = None  # None (or 0): LEVEL_DENOM
    prob: float = 0.5
    weights: tuple | None = None  # normalised; ops are then picked without replacement


def _bad(config_str: str, why: str) -> UserError:
    return UserError(f'--aa {config_str!r}: {why}; use {GRAMMAR}')


def parse(config_str: str) -> RandAugment:
    """timm's rand_augment_transform reading of `config_str` ('rand-m9-mstd0.5', ...).

    As timm: sections in any order; the last m, n, inc and p count, the first mstd, mmax and t;
    empty sections are skipped. Unlike timm, a section without a number and a `t` set other than
    `weights` are errors here (timm ignores them silently).
    """
    sections = config_str.split('-')
    if sections[0] != 'rand':
        raise _bad(config_str, 'only RandAugment strings starting with "rand" are supported')
    values, transforms = {}, None
    for section in sections[1:]:
        if not section:
            continue
        if section.startswith('t'):
            transforms = section[1:] if transforms is None else transforms
            continue
        match = re.fullmatch(r'([^\d]*)(\d.*)', section)
        if match is None:
            raise _bad(config_str, f'section {section!r} has no number')
        key, text = match.groups()
        if key not in ('m', 'n', 'mstd', 'mmax', 'inc', 'p'):
            raise _bad(config_str, f'unknown section {section!r}')
        try:
            value = float(text) if key in ('mstd', 'p') else int(text)
        except ValueError:
            raise _bad(
                config_str, f'{text!r} in {section!r} is not a {"number" if key in ("mstd", "p") else "whole number"}'
            ) from None
        if key not in ('mstd', 'mmax') or key not in values:
            values[key] = value
    mstd = values.get('mstd', 0.0)
    policy = RandAugment(
        ops=RAND_INCREASING_TRANSFORMS if values.get('inc', 0) else RAND_TRANSFORMS,
        num_layers=values.get('n', 2),
        magnitude=values.get('m', int(LEVEL_DENOM)),
        magnitude_std=math.inf if mstd > 100 else mstd,
        magnitude_max=values.get('mmax'),
        prob=values.get('p', 0.5),
    )
    if transforms == 'weights':
        total = sum(RAND_WEIGHTED.values())
        policy = dataclasses.replace(
            policy, ops=tuple(RAND_WEIGHTED), weights=tuple(w / total for w in RAND_WEIGHTED.values())
        )
        if policy.num_layers > len(policy.ops):
            raise _bad(config_str, f'tweights picks distinct ops, at most n{len(policy.ops)}')
    elif transforms is not None:
        raise _bad(config_str, f'transform set {transforms!r} is not supported (only tweights)')
    if not 0 <= policy.prob <= 1:
        raise _bad(config_str, f'p{policy.prob} is not a probability in [0, 1]')
    return policy


def _signed(value, negate):
    return tf.where(negate, -value, value)


def _whole(value):
    """Python's int() of a non-negative float64 tensor."""
    return tf.cast(tf.floor(value), tf.int32)


def _rotate_coeffs(degrees, width, height):
    """The affine coefficients of PIL's Image.rotate(degrees) about the image centre."""
    angle = -degrees * (math.pi / 180)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = tf.cast(width, tf.float64) / 2, tf.cast(height, tf.float64) / 2
    return cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy


def apply_op(name: str, image, magnitude, negate, fill, resample='BILINEAR'):
    """timm's AugmentOp `name` at `magnitude` (sign flipped where timm flips it, if `negate`), on a
    float32 image of whole values; `resample` (BILINEAR / NEAREST) for the geometric ones."""
    level = tf.cast(magnitude, tf.float64) / LEVEL_DENOM
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    enhance = dict(
        Color=image_ops.color,
        Contrast=image_ops.contrast,
        Brightness=image_ops.brightness,
        Sharpness=image_ops.sharpness,
    )
    if name in ('AutoContrast', 'Equalize', 'Invert'):
        return {'AutoContrast': image_ops.auto_contrast, 'Equalize': image_ops.equalize, 'Invert': image_ops.invert}[
            name
        ](image)
    if name.startswith('Posterize'):
        bits = _whole(level * 4)
        return image_ops.posterize(image, 4 - bits if name.endswith('Increasing') else bits)
    if name.startswith('Solarize'):
        if name == 'SolarizeAdd':
            return image_ops.solarize_add(image, tf.minimum(128, _whole(level * 110)))
        threshold = tf.minimum(256, _whole(level * 256))
        return image_ops.solarize(image, 256 - threshold if name.endswith('Increasing') else threshold)
    if name.removesuffix('Increasing') in enhance:
        if name.endswith('Increasing'):
            factor = tf.maximum(1.0 + _signed(level * 0.9, negate), 0.1)  # the float64 tensor first
        else:
            factor = level * 1.8 + 0.1
        return enhance[name.removesuffix('Increasing')](image, factor)
    if name == 'Rotate':
        coeffs = _rotate_coeffs(_signed(level * 30.0, negate), width, height)
    elif name in ('ShearX', 'ShearY'):
        shear = _signed(level * 0.3, negate)
        coeffs = (1, shear, 0, 0, 1, 0) if name == 'ShearX' else (1, 0, 0, shear, 1, 0)
    elif name == 'TranslateXRel':
        coeffs = (1, 0, _signed(level * TRANSLATE_PCT, negate) * tf.cast(width, tf.float64), 0, 1, 0)
    elif name == 'TranslateYRel':
        coeffs = (1, 0, 0, 0, 1, _signed(level * TRANSLATE_PCT, negate) * tf.cast(height, tf.float64))
    else:
        raise ValueError(f'unknown RandAugment op {name!r}')
    return image_ops.affine(image, coeffs, fill, resample)


# Ops run whole under XLA in the pipeline (fused, its gathers fast): 2-4x cheaper there than as
# TensorFlow kernels, and within the same bounds against timm's (tests/test_augment.py). The colour blends
# stay TensorFlow kernels: XLA's fused arithmetic rounds differently, and they must match PIL exactly.
COMPILED_OPS = ('AutoContrast', 'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


@functools.cache
def compiled_op(name: str, fill: tuple, resample: str = 'BILINEAR'):
    """apply_op(name, ..., fill, resample) as one XLA-compiled function of (image, magnitude, negate)."""
    return tf.function(
        lambda image, magnitude, negate: apply_op(name, image, magnitude, negate, fill, resample),
        jit_compile=True,
        autograph=False,
    )


def _magnitude(key, policy: RandAugment):
    """timm's AugmentOp magnitude draw, float64."""
    magnitude = tf.constant(policy.magnitude, tf.float64)
    if policy.magnitude_std == math.inf:
        magnitude = tf.random.stateless_uniform([], key, 0.0, policy.magnitude, tf.float64)
    elif policy.magnitude_std > 0:
        magnitude += policy.magnitude_std * tf.random.stateless_normal([], key, dtype=tf.float64)
    return tf.clip_by_value(magnitude, 0.0, float(policy.magnitude_max or LEVEL_DENOM))


def _choices(key, policy: RandAugment):
    """The op index of each layer: uniform with replacement, or by weight without (Gumbel top-k)."""
    if policy.weights is None:
        return tf.random.stateless_uniform([policy.num_layers], key, 0, len(policy.ops), tf.int32)
    gumbel = -tf.math.log(
        -tf.math.log(tf.random.stateless_uniform([len(policy.ops)], key, minval=1e-12, maxval=1.0, dtype=tf.float64))
    )
    return tf.math.top_k(gumbel + tf.math.log(tf.constant(policy.weights, tf.float64)), policy.num_layers).indices


def rand_augment(image, key, policy: RandAugment, fill, interpolation='bilinear'):
    """`policy` applied to one uint8 [H, W, 3] image; `fill` per channel. The geometric ops resample as
    timm's do with `interpolation`: PIL's BICUBIC or NEAREST affine for 'bicubic' / 'nearest', else
    BILINEAR (PIL's affine has no box or lanczos filter: timm's ops would fail there)."""
    choice_key, key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    choices = _choices(choice_key, policy)
    layer_keys = tf.random.experimental.stateless_split(key, max(policy.num_layers, 1))
    resample = {'nearest': 'NEAREST', 'bicubic': 'BICUBIC'}.get(interpolation, 'BILINEAR')
    shape = image.shape
    image = tf.cast(image, tf.float32)
    for i in range(policy.num_layers):  # unrolled: n is small (timm's default 2)
        apply_key, magnitude_key, sign_key = tf.unstack(tf.random.experimental.stateless_split(layer_keys[i], 3))
        applied = tf.random.stateless_uniform([], apply_key, dtype=tf.float64) < policy.prob
        magnitude = _magnitude(magnitude_key, policy)
        negate = tf.random.stateless_uniform([], sign_key, dtype=tf.float64) > 0.5
        ops = {
            name: compiled_op(name, tuple(fill), resample)
            if name in COMPILED_OPS
            else functools.partial(apply_op, name, fill=fill, resample=resample)
            for name in policy.ops
        }
        branches = [
            lambda op=ops[name], image=image: tf.ensure_shape(op(image, magnitude, negate), shape)  # noqa: B023 (called in this turn)
            for name in policy.ops
        ]
        branches.append(lambda image=image: image)  # not applied (probability 1 - p)
        image = tf.switch_case(tf.where(applied, choices[i], len(policy.ops)), branches)
    return tf.saturate_cast(image, tf.uint8)
