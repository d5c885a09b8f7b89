"""Training configuration: timm's `train.py` flag names, meanings and defaults.

`parse_args(argv)` turns a command line into a frozen `Config`; `train_and_evaluate(config)` runs it.
When DATA is omitted the embedded digits dataset is used, and the defaults that would run for days
on a CPU (timm's 300 epochs at 224 px, batch 128) give way to `DIGITS_DEFAULTS`.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional

from jax_ema import lr_noise
from jax_ema.cli import ArgumentParser
from jax_ema.errors import UserError

# Defaults used only when no DATA is given (the embedded digits, 1,437 training images of 8x8 px).
DIGITS_DEFAULTS = dict(epochs=10, img_size=32, batch_size=64, lr=0.1, warmup_epochs=1, weight_decay=5e-4,
                       scale=(0.6, 1.0), hflip=0.0, crop_pct=1.0, interpolation='bilinear',
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # ImageNet's, whatever the model


@dataclasses.dataclass(frozen=True)
class Config:
    # data
    data: Optional[str] = None
    train_split: str = 'train'
    val_split: str = 'validation'
    val_split_fraction: float = 0.2
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    batch_size: Optional[int] = None           # per device, as timm's is per GPU
    grad_accum_steps: int = 1                  # micro-batches per optimizer update (and per EMA update)
    validation_batch_size: Optional[int] = None
    workers: int = 4
    scale: Optional[tuple] = None
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: Optional[float] = None
    crop_pct: Optional[float] = None
    aa: Optional[str] = None                   # RandAugment, e.g. rand-m9-mstd0.5
    reprob: float = 0.0                        # random erasing: probability, mode, boxes
    remode: str = 'pixel'
    recount: int = 1
    # model
    model: str = 'resnet50'
    initial_checkpoint: Optional[str] = None   # timm weights (.safetensors / .pth / .pth.tar)
    initial_checkpoint_ema: bool = False       # take the file's state_dict_ema
    drop: float = 0.0                          # dropout before the classifier (timm --drop, model drop_rate)
    drop_path: Optional[float] = None          # stochastic depth (timm --drop-path, model drop_path_rate)
    # optimizer and schedule
    opt: str = 'sgd'
    opt_eps: Optional[float] = None
    opt_betas: Optional[tuple] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    lr: Optional[float] = None
    lr_base: float = 0.1
    lr_base_size: int = 256
    lr_base_scale: str = ''
    sched: str = 'cosine'
    sched_on_updates: bool = False
    epochs: Optional[int] = None
    warmup_epochs: Optional[int] = None
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: float = 90
    decay_rate: float = 0.1
    cooldown_epochs: int = 0
    warmup_prefix: bool = False
    lr_noise: Optional[tuple] = None           # on/off points, fractions of --epochs (timm's noise_range)
    lr_noise_pct: float = 0.67
    lr_noise_std: float = 1.0
    smoothing: float = 0.1
    # EMA
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    model_ema_force_cpu: bool = False
    model_ema_update_every: int = 1            # one EMA update every K optimizer updates, with decay**K
    model_ema_extra_decays: tuple = ()         # --model-ema-decay D0 D1 D2: D1, D2 (model_ema_decay is D0)
    model_ema_stds: tuple = ()                 # power-function EMAs (EDM2) of these sigma_rel
    model_ema_snapshot_every: int = 0          # save the power-function EMAs every N updates (0: off)
    snapshot_dtype: str = 'float32'
    # mixed precision (jax_ema/precision.py); the optimizer state and the EMA stay float32
    amp: bool = False                          # float32 params, compute in amp_dtype
    amp_dtype: str = 'bfloat16'                # timm's default is float16 (here: with loss scaling)
    model_dtype: Optional[str] = None          # params stored in this dtype (timm --model-dtype)
    model_ema_shard: bool = False              # each device holds 1/N of the EMA (offload.py)
    # several processes (jax.distributed.initialize; see parallel.initialize)
    coordinator_address: Optional[str] = None  # HOST:PORT of process 0
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    distributed: bool = False                  # let JAX detect the cluster (SLURM, Open MPI, TPU pod)
    # run
    seed: int = 42
    output: str = ''
    experiment: str = ''
    log_interval: int = 50
    recovery_interval: int = 0                 # save a recovery checkpoint every N updates (0: off)
    resume: Optional[str] = None               # run folder / checkpoints folder / step folder
    no_resume_opt: bool = False
    checkpoint_hist: int = 10
    eval_metric: str = 'top1'
    # pretrained weights and the data config (jax_ema/pretrained.py, jax_ema/data_config.py)
    pretrained: bool = False                   # timm's weights of --model (NAME or NAME.TAG) from the HF hub
    pretrained_path: Optional[str] = None      # the pretrained weights from this file (implies --pretrained)
    input_size: Optional[tuple] = None         # (3, N, N): wins over --img-size, as in timm
    interpolation: Optional[str] = None        # bilinear | bicubic; None: the model's
    mean: Optional[tuple] = None               # None: the model's
    std: Optional[tuple] = None

    def resolved(self) -> 'Config':
        """Fill the data-dependent defaults: timm's for a user folder, small ones for digits; then the data
        config: the model's (timm's resolve_data_config) for a user folder, the digits' own for the digits."""
        timm = dict(epochs=300, batch_size=128, lr=None, warmup_epochs=5, weight_decay=2e-5,
                    scale=(0.08, 1.0), hflip=0.5)
        base = DIGITS_DEFAULTS if self.data is None else timm
        fill = {k: v for k, v in base.items() if getattr(self, k) is None}
        if self.data is None and self.lr_base != 0.1 and self.lr is None:
            fill.pop('lr')  # the user asked for lr scaling from --lr-base
        config = dataclasses.replace(self, **fill, pretrained=self.pretrained or bool(self.pretrained_path))
        from jax_ema import data_config
        resolved = data_config.resolve_data_config(config.model, config.img_size, config.input_size, config.crop_pct,
                                                   config.mean, config.std, config.interpolation)
        return dataclasses.replace(config, **data_config.config_fields(resolved))


def _decay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number')
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'{value} is outside [0, 1]; use e.g. 0.9998')
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog='python -m jax_ema.train',
                                description='timm-style image classification training with an EMA, in JAX.')
    a = p.add_argument
    a('data', nargs='?', default=None, help='dataset folder (omit to use the embedded digits)')
    a('--data-dir', dest='data_dir', default=None, help='dataset folder (same as DATA)')
    a('--train-split', default='train')
    a('--val-split', default='validation')
    a('--val-split-fraction', type=float, default=0.2,
      help='held-out fraction when DATA has class folders but no split folders')
    a('--model', default='resnet50')
    a('--num-classes', type=int, default=None)
    a('--initial-checkpoint', default=None, metavar='PATH',
      help='start from timm weights: .safetensors, or .pth/.pth.tar/.bin (loaded with weights_only=True)')
    a('--initial-checkpoint-ema', action='store_true',
      help="take the file's state_dict_ema instead of its state_dict")
    a('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate before the classifier')
    a('--drop-path', type=float, default=None, metavar='PCT', help='drop path (stochastic depth) rate')
    a('--img-size', type=int, default=None)
    a('-b', '--batch-size', type=int, default=None, help='per device (timm: per GPU)')
    a('-vb', '--validation-batch-size', type=int, default=None)
    a('--grad-accum-steps', type=int, default=1, help='micro-batches of -b per optimizer and EMA update')
    a('-j', '--workers', type=int, default=4)
    a('--scale', type=float, nargs=2, default=None)
    a('--ratio', type=float, nargs=2, default=(3 / 4, 4 / 3))
    a('--hflip', type=float, default=None)
    a('--crop-pct', type=float, default=None)
    a('--aa', default=None, metavar='NAME', help="RandAugment as timm's, e.g. rand-m9-mstd0.5 (see README)")
    a('--reprob', type=float, default=0.0, metavar='PCT', help='random erasing probability')
    a('--remode', default='pixel', help='random erasing fill: const, rand or pixel')
    a('--recount', type=int, default=1, help='random erasing: at most this many boxes per image')
    a('--opt', default='sgd')
    a('--opt-eps', type=float, default=None)
    a('--opt-betas', type=float, nargs='+', default=None)
    a('--momentum', type=float, default=0.9)
    a('--weight-decay', type=float, default=None)
    a('--lr', type=float, default=None)
    a('--lr-base', type=float, default=0.1)
    a('--lr-base-size', type=int, default=256)
    a('--lr-base-scale', default='')
    a('--sched', default='cosine')
    a('--sched-on-updates', action='store_true')
    a('--epochs', type=int, default=None)
    a('--warmup-epochs', type=int, default=None)
    a('--warmup-lr', type=float, default=1e-5)
    a('--min-lr', type=float, default=0.0)
    a('--decay-epochs', type=float, default=90)
    a('--decay-rate', '--dr', type=float, default=0.1)
    a('--cooldown-epochs', type=int, default=0)
    a('--warmup-prefix', action='store_true')
    a('--lr-noise', type=float, nargs='+', default=None, metavar='PCT',
      help='lr noise on (and off) points as fractions of --epochs, e.g. 0.42 0.9 (seeded by --seed)')
    a('--lr-noise-pct', type=float, default=0.67, help='lr noise limit (|noise| < PCT)')
    a('--lr-noise-std', type=float, default=1.0, help='lr noise std-dev')
    a('--smoothing', type=float, default=0.1)
    a('--model-ema', action='store_true', help='keep an EMA of the weights')
    a('--model-ema-decay', type=_decay, nargs='+', default=[0.9998], metavar='D',
      help='EMA decay; several (e.g. 0.999 0.9998 0.9999) keep one EMA each, updated together')
    a('--model-ema-warmup', action='store_true', help="timm's decay warmup 1-(1+t)^(-2/3)")
    a('--model-ema-force-cpu', action='store_true', help='keep the EMA in host memory')
    a('--model-ema-update-every', type=int, default=1, metavar='K',
      help='update the EMA once every K optimizer updates with decay**K (same horizon; for the host EMA)')
    a('--ema-decay', type=_decay, nargs='+', default=None, metavar='D',
      help='shorthand for --model-ema --model-ema-decay D [D ...]')
    a('--model-ema-std', type=float, nargs='+', default=None, metavar='SIGMA_REL',
      help='also keep power-function EMAs (EDM2) of these relative widths, e.g. 0.05 0.10')
    a('--model-ema-snapshot-every', type=int, default=0, metavar='N',
      help='save the --model-ema-std EMAs to RUN/snapshots/ every N updates (for python -m jax_ema.posthoc)')
    a('--snapshot-dtype', default='float32', choices=('float32', 'float16'), help='dtype of the snapshots')
    a('--amp', action='store_true', help='mixed precision: float32 weights, compute in --amp-dtype')
    a('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'),
      help='compute dtype of --amp (default bfloat16; float16 adds dynamic loss scaling)')
    a('--model-dtype', default=None, metavar='DTYPE',
      help='store the weights in this dtype (float32 or bfloat16); optimizer state and EMA stay float32')
    a('--model-ema-shard', action='store_true',
      help='split the EMA over the devices (1/N each, updated with no communication)')
    a('--coordinator-address', default=None, metavar='HOST:PORT',
      help='multi-process run: the address of process 0 (with --num-processes and --process-id)')
    a('--num-processes', type=int, default=None)
    a('--process-id', type=int, default=None)
    a('--distributed', action='store_true',
      help='multi-process run with the addresses detected from the environment (SLURM, Open MPI, TPU pod)')
    a('--seed', type=int, default=42)
    a('--output', default='')
    a('--experiment', default='')
    a('--log-interval', type=int, default=50)
    a('--recovery-interval', type=int, default=0, help='save a recovery checkpoint every N updates')
    a('--resume', default=None, metavar='CHECKPOINT',
      help='resume from a run folder, its checkpoints/ folder or one step folder (weights, optimizer, EMA, '
           'update count, data position)')
    a('--no-resume-opt', action='store_true', help='do not restore the optimizer state when resuming')
    a('--checkpoint-hist', type=int, default=10)
    a('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'))
    a('--pretrained', action='store_true',
      help="start from timm's pretrained weights of --model (NAME: its default tag, or NAME.TAG), fetched from "
           'the Hugging Face hub (HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE apply)')
    a('--pretrained-path', default=None, metavar='FILE',
      help='the pretrained weights from this file instead (.safetensors; .pth/.bin need torch); implies --pretrained')
    a('--input-size', type=int, nargs=3, default=None, metavar='N',
      help="3 N N: image size (wins over --img-size; default: the model's pretrained config)")
    a('--interpolation', default=None, metavar='NAME', help="bilinear or bicubic (default: the model's)")
    a('--mean', type=float, nargs='+', default=None, metavar='MEAN', help="normalisation mean (default: the model's)")
    a('--std', type=float, nargs='+', default=None, metavar='STD', help="normalisation std (default: the model's)")
    return p


def _split_ema_flags(args: dict) -> None:
    """--model-ema-decay D0 [D1 ...] -> model_ema_decay D0 + model_ema_extra_decays; checks the EMA flags."""
    decays = args['model_ema_decay']
    if len(set(decays)) < len(decays):
        raise UserError(f'--model-ema-decay {" ".join(map(str, decays))} repeats a decay; give each one once')
    args['model_ema_decay'], args['model_ema_extra_decays'] = decays[0], tuple(decays[1:])
    stds = args.pop('model_ema_std')
    args['model_ema_stds'] = tuple(stds or ())
    if stds is not None:
        from jax_ema import power_ema
        for std in stds:
            power_ema.gamma_from_std(std)  # UserError outside (0, 1/sqrt(12)]
        if len(set(stds)) < len(stds):
            raise UserError(f'--model-ema-std {" ".join(map(str, stds))} repeats a value; give each one once')
        if not args['model_ema']:
            raise UserError('--model-ema-std needs --model-ema (the power-function EMAs are kept beside it)')
    if args['model_ema_snapshot_every'] < 0:
        raise UserError(f'--model-ema-snapshot-every must be >= 0, got {args["model_ema_snapshot_every"]}')
    if args['model_ema_snapshot_every'] and not stds:
        raise UserError('--model-ema-snapshot-every saves the power-function EMAs; add --model-ema '
                        '--model-ema-std S [S ...] (e.g. 0.05 0.10)')


def parse_args(argv=None) -> Config:
    """Command line -> resolved Config; bad flags raise UserError with argparse's one line."""
    args = vars(build_parser().parse_args(argv))
    data_dir = args.pop('data_dir')
    if args['data'] and data_dir and args['data'] != data_dir:
        raise UserError(f'DATA {args["data"]!r} and --data-dir {data_dir!r} differ; give one of them')
    args['data'] = args['data'] or data_dir
    ema_decay = args.pop('ema_decay')
    if ema_decay is not None:
        args['model_ema'], args['model_ema_decay'] = True, ema_decay
    _split_ema_flags(args)
    for key in ('scale', 'ratio', 'opt_betas', 'lr_noise', 'input_size', 'mean', 'std'):
        if args[key] is not None:
            args[key] = tuple(args[key])
    for key in ('batch_size', 'validation_batch_size', 'epochs', 'img_size', 'num_classes', 'log_interval',
                'model_ema_update_every', 'grad_accum_steps', 'num_processes'):
        if args[key] is not None and args[key] <= 0:
            raise UserError(f'--{key.replace("_", "-")} must be positive, got {args[key]}')
    for key in ('checkpoint_hist', 'recovery_interval', 'warmup_epochs', 'cooldown_epochs', 'workers',
                'process_id'):
        if args[key] is not None and args[key] < 0:
            raise UserError(f'--{key.replace("_", "-")} must be >= 0, got {args[key]}')
    for key in ('lr', 'lr_base', 'warmup_lr', 'min_lr', 'weight_decay', 'momentum'):
        if args[key] is not None and not args[key] >= 0:  # also catches nan
            raise UserError(f'--{key.replace("_", "-")} must be a number >= 0, got {args[key]}')
    for key in ('drop', 'drop_path'):
        if args[key] is not None and not 0.0 <= args[key] < 1.0:
            raise UserError(f'--{key.replace("_", "-")} must be in [0, 1), got {args[key]}')
    lr_noise.check(args['lr_noise'], args['lr_noise_pct'], args['lr_noise_std'])
    if not 0.0 <= args['smoothing'] < 1.0:
        raise UserError(f'--smoothing must be in [0, 1), got {args["smoothing"]}; timm uses 0.1')
    return Config(**args).resolved()
