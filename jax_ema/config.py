"""Training configuration: one frozen dataclass, `Config`, whose fields are timm's `train.py` flags.

Each field is the single source of its flag: default, help text, flag names and theme group (`flag(...)`);
`build_parser()` generates the command line from the fields, grouped in `--help` as timm groups them, and
`parse_args(argv)` turns a command line into a `Config`. Constructing a `Config` (from the CLI or the
library API) checks it (`Config.__post_init__`, the one place flags are validated) and fills the defaults
that depend on the data: timm's for a DATA folder (`TIMM_DEFAULTS`), small ones for the embedded digits
(`DIGITS_DEFAULTS`), since timm's 300 epochs at 224 px would run for days on a CPU. Then it resolves the
data config once (data_config.py): image size, interpolation, mean/std and crop_pct are the model's
pretrained config, as timm's `resolve_data_config`, unless a flag sets them; the digits keep their own.

Adding a timm flag is adding one field here (and reading it where it is used).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from jax_ema import data_config, ema, lr_noise
from jax_ema.cli import ArgumentParser
from jax_ema.device_input import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from jax_ema.errors import UserError

# The defaults that depend on the data, filled where a field is left None.
# (With DATA the image size, interpolation, mean/std and crop_pct are the model's: data_config.py.)
TIMM_DEFAULTS = dict(
    epochs=300, batch_size=128, lr=None, warmup_epochs=5, weight_decay=2e-5, scale=(0.08, 1.0), hflip=0.5
)
DIGITS_DEFAULTS = dict(
    epochs=10,
    img_size=32,
    batch_size=64,
    lr=0.1,
    warmup_epochs=1,
    weight_decay=5e-4,
    scale=(0.6, 1.0),
    hflip=0.0,
    crop_pct=1.0,  # the embedded digits: 1,437 images of 8x8 px
    interpolation='bilinear',
    mean=IMAGENET_DEFAULT_MEAN,
    std=IMAGENET_DEFAULT_STD,
)  # any model

GROUPS = {  # theme -> --help section title, in timm's order
    'data': 'Dataset parameters',
    'model': 'Model parameters',
    'optimizer': 'Optimizer parameters',
    'schedule': 'Learning rate schedule parameters',
    'augment': 'Augmentation and regularization parameters',
    'ema': 'Model exponential moving average parameters',
    'precision': 'Mixed precision parameters',
    'distributed': 'Distributed parameters',
    'run': 'Miscellaneous parameters',
}


def flag(group: str, default=None, help: str = '', flags: tuple = (), **argparse_kwargs):  # noqa: A002
    """A Config field that is also a command-line flag: `flags` (default: `--field-name`), its `group` (a
    GROUPS key), `help`, and what argparse needs beyond the field's type (nargs, choices, metavar, type)."""
    assert group in GROUPS, group
    return dataclasses.field(
        default=default, metadata=dict(group=group, help=help, flags=tuple(flags), argparse=argparse_kwargs)
    )


def _decay(text: str) -> float:
    """argparse type of an EMA decay: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'{value} is outside [0, 1]; use e.g. {ema.DEFAULT_DECAY}')
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    # data
    data: str | None = flag('data', None, 'dataset folder (omit to use the embedded digits)', ('data',), nargs='?')
    train_split: str = flag('data', 'train')
    val_split: str = flag('data', 'validation')
    val_split_fraction: float = flag('data', 0.2, 'held-out fraction when DATA has class folders but no split folders')
    workers: int | None = flag(
        'data',
        None,
        'threads decoding and augmenting images (default: sized to the host by tf.data)',
        ('-j', '--workers'),
    )
    verify_images: bool = flag(
        'data', False, 'decode every image once before training and stop at a bad one (default: skip it when read)'
    )
    # model, batch and image size
    model: str = flag('model', 'resnet50')
    num_classes: int | None = flag('model', None, 'default: the number of class folders')
    initial_checkpoint: str | None = flag(
        'model',
        None,
        'start from timm weights: .safetensors, or .pth/.pth.tar/.bin (loaded with weights_only=True)',
        metavar='PATH',
    )
    initial_checkpoint_ema: bool = flag('model', False, "take the file's state_dict_ema instead of its state_dict")
    pretrained: bool = flag(
        'model',
        False,
        "start from timm's pretrained weights of --model (NAME: its default "
        'tag, or NAME.TAG), fetched from the Hugging Face hub (HF_HUB_OFFLINE, HF_HOME, '
        'HF_HUB_CACHE apply)',
    )
    pretrained_path: str | None = flag(
        'model',
        None,
        'the pretrained weights from this file instead (.safetensors; .pth/.bin need torch); implies --pretrained',
        metavar='FILE',
    )
    # the data config (data_config.py): None takes the model's (timm's resolve_data_config), the digits' own
    img_size: int | None = flag('model', None, "default: the model's data config; 32 without DATA")
    input_size: tuple | None = flag(
        'model', None, '3 N N: the image size (wins over --img-size, as in timm)', nargs=3, type=int, metavar='N'
    )
    crop_pct: float | None = flag(
        'model',
        None,
        "center crop fraction of the validation images (default: the model's data config; 1.0 without DATA)",
    )
    interpolation: str | None = flag(
        'model',
        None,
        "resize filter: bilinear, bicubic, lanczos or box (default: the model's data config; bilinear without DATA)",
        metavar='NAME',
    )
    mean: tuple | None = flag(
        'model',
        None,
        "normalisation mean, 1 or 3 values (default: the model's data config; ImageNet's without DATA)",
        nargs='+',
        type=float,
        metavar='MEAN',
    )
    std: tuple | None = flag(
        'model',
        None,
        "normalisation std, 1 or 3 values (default: the model's data config; ImageNet's without DATA)",
        nargs='+',
        type=float,
        metavar='STD',
    )
    batch_size: int | None = flag('model', None, 'per device (timm: per GPU)', ('-b', '--batch-size'))
    validation_batch_size: int | None = flag('model', None, 'default: -b', ('-vb', '--validation-batch-size'))
    grad_accum_steps: int = flag('model', 1, 'micro-batches of -b per optimizer and EMA update')
    # optimizer
    opt: str = flag('optimizer', 'sgd')
    opt_eps: float | None = flag('optimizer', None)
    opt_betas: tuple | None = flag('optimizer', None, nargs='+', type=float)
    momentum: float = flag('optimizer', 0.9)
    weight_decay: float | None = flag('optimizer', None)
    # learning rate schedule
    sched: str = flag('schedule', 'cosine')
    sched_on_updates: bool = flag('schedule', False)
    lr: float | None = flag('schedule', None, 'default: --lr-base scaled by the global batch (timm)')
    lr_base: float = flag('schedule', 0.1)
    lr_base_size: int = flag('schedule', 256)
    lr_base_scale: str = flag('schedule', '')
    lr_noise: tuple | None = flag(
        'schedule',
        None,
        'lr noise on (and off) points as fractions of --epochs, e.g. 0.42 0.9 (seeded by --seed)',
        nargs='+',
        type=float,
        metavar='PCT',
    )
    lr_noise_pct: float = flag('schedule', 0.67, 'lr noise limit (|noise| < PCT)')
    lr_noise_std: float = flag('schedule', 1.0, 'lr noise std-dev')
    warmup_lr: float = flag('schedule', 1e-5)
    min_lr: float = flag('schedule', 0.0)
    epochs: int | None = flag('schedule', None)
    decay_epochs: float = flag('schedule', 90)
    warmup_epochs: int | None = flag('schedule', None)
    cooldown_epochs: int = flag('schedule', 0)
    warmup_prefix: bool = flag('schedule', False)
    decay_rate: float = flag('schedule', 0.1, flags=('--decay-rate', '--dr'))
    # augmentation and regularization
    scale: tuple | None = flag('augment', None, nargs=2, type=float)
    ratio: tuple = flag('augment', (3 / 4, 4 / 3), nargs=2, type=float)
    hflip: float | None = flag('augment', None)
    aa: str | None = flag('augment', None, "RandAugment as timm's, e.g. rand-m9-mstd0.5", metavar='NAME')
    reprob: float = flag('augment', 0.0, 'random erasing probability', metavar='PCT')
    remode: str = flag('augment', 'pixel', 'random erasing fill: const, rand or pixel')
    recount: int = flag('augment', 1, 'random erasing: at most this many boxes per image')
    smoothing: float = flag('augment', 0.1, 'label smoothing')
    drop: float = flag('augment', 0.0, 'dropout rate before the classifier', metavar='PCT')
    drop_path: float | None = flag('augment', None, 'drop path (stochastic depth) rate', metavar='PCT')
    # EMA
    model_ema: bool = flag('ema', False, 'keep an EMA of the weights')
    model_ema_decay: float = flag(
        'ema',
        ema.DEFAULT_DECAY,
        'EMA decay; several (e.g. 0.999 0.9998 0.9999) keep one EMA each, updated together',
        nargs='+',
        type=_decay,
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
    # mixed precision (precision.py); the optimizer state and the EMA stay float32
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
    # several processes (parallel.initialize)
    coordinator_address: str | None = flag(
        'distributed',
        None,
        'multi-process run: the address of process 0 (with --num-processes and --process-id)',
        metavar='HOST:PORT',
    )
    num_processes: int | None = flag('distributed', None)
    process_id: int | None = flag('distributed', None)
    distributed: bool = flag(
        'distributed',
        False,
        'multi-process run with the addresses detected from the environment (SLURM, Open MPI, TPU pod)',
    )
    # run
    seed: int = flag('run', 42)
    output: str = flag('run', '', 'parent folder of the run folders (default: ./output/train)')
    experiment: str = flag('run', '', 'run folder name')
    log_interval: int = flag('run', 50)
    recovery_interval: int = flag('run', 0, 'save a recovery checkpoint every N updates (0: off)')
    resume: str | None = flag(
        'run',
        None,
        'resume from a run folder, its checkpoints/ folder or one step folder '
        '(weights, optimizer, EMA, update count, data position)',
        metavar='CHECKPOINT',
    )
    no_resume_opt: bool = flag('run', False, 'do not restore the optimizer state when resuming')
    checkpoint_hist: int = flag('run', 10, 'keep this many best checkpoints (and the last)')
    eval_metric: str = flag('run', 'top1', choices=('top1', 'top5', 'loss'))

    def __post_init__(self):
        for key, value in _data_defaults(self).items():
            object.__setattr__(self, key, value)
        for key, value in _resolve_data_config(self).items():
            object.__setattr__(self, key, value)
        _validate(self)

    @property
    def data_config(self) -> dict:
        """The run's data config with timm's keys (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
        return data_config.of_config(self)

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


def _data_defaults(config: Config) -> dict:
    """The data-dependent defaults of the fields left None: timm's for a DATA folder, DIGITS_DEFAULTS without."""
    base = DIGITS_DEFAULTS if config.data is None else TIMM_DEFAULTS
    fill = {k: v for k, v in base.items() if getattr(config, k) is None}
    if config.data is None and config.lr_base != Config.lr_base and config.lr is None:
        fill.pop('lr')  # the user asked for lr scaling from --lr-base
    return fill


def _resolve_data_config(config: Config) -> dict:
    """The data config's fields, resolved once as timm's resolve_data_config (--input-size folded into
    --img-size), and --pretrained implied by --pretrained-path."""
    resolved = data_config.resolve_data_config(
        config.model, config.img_size, config.input_size, config.crop_pct, config.mean, config.std, config.interpolation
    )
    return dict(
        data_config.config_fields(resolved),
        input_size=None,
        pretrained=config.pretrained or bool(config.pretrained_path),
    )


def _flag_name(key: str) -> str:
    return f'--{key.replace("_", "-")}'


def _validate(c: Config) -> None:
    """Every check of the flags' values and combinations, each a one-line UserError."""
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
    for key in (
        'batch_size',
        'validation_batch_size',
        'epochs',
        'img_size',
        'num_classes',
        'log_interval',
        'model_ema_update_every',
        'grad_accum_steps',
        'num_processes',
    ):
        value = getattr(c, key)
        if value is not None and value <= 0:
            raise UserError(f'{_flag_name(key)} must be positive, got {value}')
    for key in ('checkpoint_hist', 'recovery_interval', 'warmup_epochs', 'cooldown_epochs', 'workers', 'process_id'):
        value = getattr(c, key)
        if value is not None and value < 0:
            raise UserError(f'{_flag_name(key)} must be >= 0, got {value}')
    for key in ('lr', 'lr_base', 'warmup_lr', 'min_lr', 'weight_decay', 'momentum'):
        value = getattr(c, key)
        if value is not None and not value >= 0:  # also catches nan
            raise UserError(f'{_flag_name(key)} must be a number >= 0, got {value}')
    for key in ('drop', 'drop_path'):
        value = getattr(c, key)
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f'{_flag_name(key)} must be in [0, 1), got {value}')
    lr_noise.check(c.lr_noise, c.lr_noise_pct, c.lr_noise_std)
    if not 0.0 <= c.smoothing < 1.0:
        raise UserError(f'--smoothing must be in [0, 1), got {c.smoothing}; timm uses 0.1')
    if c.model_ema_force_cpu and c.model_ema_shard:
        raise UserError(
            '--model-ema-force-cpu and --model-ema-shard exclude each other (host memory or 1/N '
            'per device); give one of them'
        )


def _help(field: dataclasses.Field) -> str:
    """The field's help text and its default (the data-dependent ones: timm's, and the digits')."""
    text = field.metadata['help']
    if field.name in TIMM_DEFAULTS and TIMM_DEFAULTS[field.name] is not None:
        default = f"default: timm's {TIMM_DEFAULTS[field.name]}; {DIGITS_DEFAULTS[field.name]} without DATA"
    elif field.default not in (None, False, '', ()):
        default = f'default: {field.default}'
    else:
        return text or None
    return f'{text} ({default})' if text else default


def build_parser() -> argparse.ArgumentParser:
    """The trainer's command line, generated from Config's fields (absent flags keep the fields' defaults)."""
    p = ArgumentParser(
        prog='python -m jax_ema.train',
        description='timm-style image classification training with an EMA, in JAX.',
        argument_default=argparse.SUPPRESS,
    )
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    hints = typing.get_type_hints(Config)
    for field in dataclasses.fields(Config):
        if 'group' not in field.metadata:
            continue
        kwargs = dict(field.metadata['argparse'], help=_help(field))
        kind = hints[field.name]
        kind = next(a for a in typing.get_args(kind) if a is not type(None)) if typing.get_args(kind) else kind
        if kind is bool:
            kwargs['action'] = 'store_true'
        elif kind is not tuple:
            kwargs.setdefault('type', kind)
        names = field.metadata['flags'] or (_flag_name(field.name),)
        if names[0].startswith('-'):
            kwargs['dest'] = field.name
        groups[field.metadata['group']].add_argument(*names, **kwargs)
        if field.name == 'data':
            groups['data'].add_argument('--data-dir', dest='data_dir', help='dataset folder (same as DATA)')
        if field.name == 'model_ema_decay':
            groups['ema'].add_argument(
                '--ema-decay',
                type=_decay,
                nargs='+',
                metavar='D',
                help='shorthand for --model-ema --model-ema-decay D [D ...]',
            )
    return p


def parse_args(argv=None) -> Config:
    """Command line -> Config (checked, defaults filled); bad flags raise UserError with one line."""
    args = vars(build_parser().parse_args(argv))
    data_dir = args.pop('data_dir', None)
    if args.get('data') and data_dir and args['data'] != data_dir:
        raise UserError(f'DATA {args["data"]!r} and --data-dir {data_dir!r} differ; give one of them')
    if data_dir:
        args['data'] = args.get('data') or data_dir
    ema_decay = args.pop('ema_decay', None)
    if ema_decay is not None:
        args['model_ema'], args['model_ema_decay'] = True, ema_decay
    if 'model_ema_decay' in args:  # D0 [D1 ...]: the first, and the extra EMAs
        args['model_ema_decay'], args['model_ema_extra_decays'] = (
            args['model_ema_decay'][0],
            tuple(args['model_ema_decay'][1:]),
        )
    for key, value in args.items():
        if isinstance(value, list):
            args[key] = tuple(value)
    return Config(**args)
