"""Model exponential moving average parameters (ema.py, offload.py, power_ema.py)."""

from __future__ import annotations

import dataclasses

from jax_ema import ema
from jax_ema.errors import UserError
from jax_ema.flags import decay, flag, positive


@dataclasses.dataclass(frozen=True)
class EmaFlags:
    model_ema: bool = flag('ema', False, 'keep an EMA of the weights')
    model_ema_decay: float = flag(
        'ema',
        ema.DEFAULT_DECAY,
        'EMA decay; several (e.g. 0.999 0.9998 0.9999) keep one EMA each, updated together',
        nargs='+',
        type=decay,
        metavar='D',
    )
    model_ema_extra_decays: tuple = ()  # --model-ema-decay D0 D1 D2: D1, D2 (model_ema_decay is D0)
    model_ema_warmup: bool = flag('ema', False, "timm's decay warmup 1-(1+t)^(-2/3)")
    model_ema_force_cpu: bool = flag('ema', False, 'keep the EMA in host memory')
    model_ema_shard: bool = flag(
        'ema', False, 'split the EMA over the devices (1/N each, updated with no communication)'
    )
    model_ema_update_every: int = flag(
        'ema',
        1,
        'update the EMA once every K optimizer updates with decay**K (same horizon; for the host EMA)',
        metavar='K',
    )
    model_ema_stds: tuple = flag(
        'ema',
        (),
        'also keep power-function EMAs (EDM2) of these relative widths, e.g. 0.05 0.10',
        ('--model-ema-std',),
        nargs='+',
        type=float,
        metavar='SIGMA_REL',
    )
    model_ema_snapshot_every: int = flag(
        'ema',
        0,
        'save the --model-ema-std EMAs to RUN/snapshots/ every N updates (for python -m jax_ema.posthoc; 0: off)',
        metavar='N',
    )
    snapshot_dtype: str = flag('ema', 'float32', 'dtype of the snapshots', choices=('float32', 'float16'))

    @property
    def ema_placement(self) -> str:
        """Where the EMA lives (offload.PLACEMENTS): 'host' (--model-ema-force-cpu), 'sharded'
        (--model-ema-shard) or 'device'."""
        return 'host' if self.model_ema_force_cpu else 'sharded' if self.model_ema_shard else 'device'

    def ema_config(self) -> ema.EmaConfig | None:
        """The EMA settings (None with EMA off)."""
        if not self.model_ema:
            return None
        return ema.EmaConfig(
            decay=self.model_ema_decay,
            use_warmup=self.model_ema_warmup,
            update_every=self.model_ema_update_every,
            extra_decays=self.model_ema_extra_decays,
            stds=self.model_ema_stds,
        )


def check(c) -> None:
    decays = (c.model_ema_decay, *c.model_ema_extra_decays)
    if len(set(decays)) < len(decays):
        raise UserError(f'--model-ema-decay {" ".join(map(str, decays))} repeats a decay; give each one once')
    if c.model_ema_stds:
        from jax_ema import power_ema

        for std in c.model_ema_stds:
            power_ema.gamma_from_std(std)  # UserError outside (0, 1/sqrt(12)]
        if len(set(c.model_ema_stds)) < len(c.model_ema_stds):
            raise UserError(
                f'--model-ema-std {" ".join(map(str, c.model_ema_stds))} repeats a value; give each one once'
            )
        if not c.model_ema:
            raise UserError('--model-ema-std needs --model-ema (the power-function EMAs are kept beside it)')
    if c.model_ema_snapshot_every < 0:
        raise UserError(f'--model-ema-snapshot-every must be >= 0, got {c.model_ema_snapshot_every}')
    if c.model_ema_snapshot_every and not c.model_ema_stds:
        raise UserError(
            '--model-ema-snapshot-every saves the power-function EMAs; add --model-ema '
            '--model-ema-std S [S ...] (e.g. 0.05 0.10)'
        )
    positive(c, 'model_ema_update_every')
    if c.model_ema_force_cpu and c.model_ema_shard:
        raise UserError(
            '--model-ema-force-cpu and --model-ema-shard exclude each other (host memory or 1/N '
            'per device); give one of them'
        )
