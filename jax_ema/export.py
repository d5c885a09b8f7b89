"""Export a checkpoint's raw or EMA weights as a timm `.safetensors` file.

    python -m jax_ema.export --checkpoint RUN [--use-ema] --out model.safetensors

RUN is a run folder, its checkpoints/ folder, one step folder, or `.../last` / `.../best`. The model
name and number of classes come from the checkpoint, and the file loads into timm with every key:

    timm.create_model(MODEL, num_classes=N, checkpoint_path='model.safetensors')

The run's data config (input size, interpolation, mean, std, crop_pct) goes into the file's header
(`jax_ema.data_config`, JSON) and into the printed line, as `pretrained_cfg_overlay=dict(...)`, with
which timm's `resolve_data_config(model=...)` gives the run's data config back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jax_ema import checkpoint
from jax_ema.cli import ArgumentParser, run_cli
from jax_ema.convert import to_timm
from jax_ema.errors import UserError
from jax_ema.models import arch_kwargs
from jax_ema.timm_io import SAFETENSORS_SUFFIX, save_timm_safetensors, variables_from_checkpoint

DATA_CONFIG_KEY = 'jax_ema.data_config'  # in the .safetensors header: the run's data config as JSON


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog='python -m jax_ema.export', description="Write a checkpoint's weights as a timm .safetensors file."
    )
    p.add_argument(
        '--checkpoint',
        required=True,
        help='run folder, its checkpoints/ folder, one step folder, or .../last, .../best',
    )
    p.add_argument('--use-ema', action='store_true', help='export the EMA weights instead of the raw ones')
    p.add_argument(
        '--ema-index',
        type=int,
        default=None,
        metavar='I',
        help='with several EMAs: member I (0 = the first decay; default: the best one); implies --use-ema',
    )
    p.add_argument('--out', required=True, help=f'output file, ending in {SAFETENSORS_SUFFIX}')
    return p


def export(checkpoint_path, out, use_ema: bool = False, ema_index: int | None = None) -> dict:
    """Write the weights; returns what was written (model, num_classes, weights, step_dir, out)."""
    out = Path(out)
    if not out.name.endswith(SAFETENSORS_SUFFIX):
        raise UserError(f'--out {str(out)!r} must end in {SAFETENSORS_SUFFIX} (timm picks the reader by the extension)')
    step_dir = checkpoint.resolve(checkpoint_path)
    metadata, variables = variables_from_checkpoint(step_dir, use_ema=use_ema, ema_index=ema_index)
    use_ema = use_ema or ema_index is not None
    model, num_classes = metadata.get('model'), metadata.get('num_classes')
    if not model or not num_classes:
        raise UserError(
            f'checkpoint {str(step_dir)!r} does not name its model and number of classes; it is not one of ours'
        )
    state_dict = to_timm(model, variables, metadata.get('model_kwargs'))
    data_config = metadata.get('data_config')
    save_timm_safetensors(state_dict, out, {DATA_CONFIG_KEY: json.dumps(data_config)} if data_config else None)
    return dict(
        model=model,
        num_classes=int(num_classes),
        weights='EMA' if use_ema else 'raw',
        step_dir=str(step_dir),
        out=str(out),
        ema_index=metadata.get('ema_index'),
        data_config=data_config,
        model_kwargs=arch_kwargs(metadata.get('model_kwargs')),  # JSON lists as the tuples given
    )


def timm_call(done: dict) -> str:
    """The timm.create_model(...) call that loads the exported file with the run's data config."""
    overlay = ''
    if done['data_config']:
        overlay = ', pretrained_cfg_overlay=dict({})'.format(
            ', '.join(f'{k}={tuple(v) if isinstance(v, list) else v!r}' for k, v in done['data_config'].items())
        )
    recorded = done.get('model_kwargs', {}).items()  # --grad-checkpointing is timm's set_grad_checkpointing()
    kwargs = ''.join(f', {k}={v!r}' for k, v in recorded if k != 'grad_checkpointing')
    return (
        f'timm.create_model({done["model"]!r}, num_classes={done["num_classes"]}{kwargs}, '
        f'checkpoint_path={done["out"]!r}{overlay})'
    )


def main(argv=None) -> int:
    def run():
        args = build_parser().parse_args(argv)
        done = export(args.checkpoint, args.out, use_ema=args.use_ema, ema_index=args.ema_index)
        print(
            f'Wrote the {done["weights"]} weights of {done["model"]} ({done["num_classes"]} classes) from '
            f'{done["step_dir"]} to {done["out"]}\n'
            f'Load them with {timm_call(done)}',
            flush=True,
        )
        return 0

    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
