"""Mixed precision parameters (jax_ema/precision.py); the optimizer state and the EMA stay float32."""

from __future__ import annotations

import dataclasses

from jax_ema.flags import flag


@dataclasses.dataclass(frozen=True)
class PrecisionFlags:
    amp: bool = flag('precision', False, 'mixed precision: float32 weights, compute in --amp-dtype')
    amp_dtype: str = flag(
        'precision',
        'bfloat16',
        'compute dtype of --amp (timm: float16; here float16 adds dynamic loss scaling)',
        choices=('bfloat16', 'float16'),
    )
    model_dtype: str | None = flag(
        'precision',
        None,
        'store the weights in this dtype (float32 or bfloat16); optimizer state and EMA stay float32',
        metavar='DTYPE',
    )
