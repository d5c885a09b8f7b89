"""Validate a checkpoint's raw or EMA weights, or a model's pretrained weights, on a dataset split, as timm's
validate.py.

    python -m jax_ema.validate [DATA] --checkpoint RUN [--use-ema] [-b N] [--img-size N] [--crop-pct F]
                               [--split NAME] [--use-train-size] [--results-file F]
    python -m jax_ema.validate [DATA] --model NAME[.TAG] | all | 'PATTERN*' | NAMES.txt [--pretrained] ...

RUN is a run folder, its checkpoints/ folder, one step folder, or `.../last` / `.../best`; the model and
its number of classes come from the checkpoint. DATA follows the trainer's rules (split folders, or class
folders split by the run's --val-split-fraction; omitted: the embedded digits), the run's args.yaml (beside
checkpoints/) supplies the split names, fraction and evaluation batch size, and the checkpoint's metadata
the data config the run resolved (validate_weights.py: the model's test size where the run kept the model's
size, as timm; with --use-train-size the numbers equal the run's summary.csv).

RUN may also be a timm weights file or training checkpoint (`.pth.tar`, `.pth`, `.safetensors`, `.bin`),
read as timm's validate.py reads one: `--use-ema` takes its `state_dict_ema`, `--model` names the model
(default: the checkpoint's args.model), `--num-classes` is checked against its classifier, and the data
config is the model's unless flags set it. Without --checkpoint the model's pretrained weights are validated
(the hub's file, as --pretrained in training); --pretrained with --checkpoint is an error (in timm the
checkpoint replaces every pretrained weight: the flag has no effect). Several checkpoints, a folder of timm
files, `--model all`, a wildcard or a file of model names run a bulk validation (validate_bulk.py), which
builds the dataset once per data config and compiles the eval step once per model.

Logs timm's `Test: [ i/N] ...` lines every --log-freq batches and its ` * Acc@1 ...` line on stderr, then
prints `--result` and the results as JSON on stdout. Unlike timm, top-1/top-5 are not rounded, and
`--use-ema` on a run without EMA is an error rather than a silent fall-back to the raw weights. timm's
--crop-mode, --crop-border-pixels, --test-pool and --retry: validate_options.py; --valid-labels, --real-labels
and --metrics-avg: validate_metrics.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys

import jax
import numpy as np

from jax_ema import (
    data_fingerprint,
    device,
    test_time_pool,
    validate_bulk,
    validate_metrics,
    validate_options,
    validate_retry,
)
from jax_ema.checkpoint import saved_members
from jax_ema.cli import ArgumentParser, run_cli
from jax_ema.data_config import resolve_data_config
from jax_ema.device_input import DeviceInput
from jax_ema.errors import UserError
from jax_ema.models import arch_kwargs, create_model
from jax_ema.pretrained_cfgs import split_model_name
from jax_ema.step import eval_step, evaluate
from jax_ema.validate_data import load_split
from jax_ema.validate_weights import load_weights, run_args, run_flags

log = logging.getLogger('jax_ema.validate')

DEFAULT_BATCH_SIZE = 256  # timm's -b, used when the run's args.yaml is not found


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog='python -m jax_ema.validate',
        description="Validate a checkpoint's raw or EMA weights, or a model's pretrained ones, as timm's validate.py.",
    )
    p.add_argument('data', nargs='?', default=None, help="dataset folder, or TFDS's data_dir (omit for the digits)")
    p.add_argument('--data-dir', default=None, help='same as DATA')
    p.add_argument('--dataset', default=None, help="tfds/NAME for a TFDS dataset (default: the run's --dataset)")
    p.add_argument('--input-key', default=None, help="TFDS image feature (default: the run's, else image)")
    p.add_argument('--target-key', default=None, help="TFDS class feature (default: the run's, else label)")
    p.add_argument('--dataset-download', action='store_true', help='let TFDS prepare the dataset')
    p.add_argument(
        '--checkpoint',
        nargs='+',
        default=None,
        metavar='C',
        help='run folder, its checkpoints/ folder, one step folder, or .../last, .../best; or a timm weights '
        'file or training checkpoint (.pth.tar, .pth, .safetensors); several, or a folder of timm files: '
        "each (default: --model's pretrained weights)",
    )
    p.add_argument(
        '--pretrained',
        action='store_true',
        help="validate --model's pretrained weights (implied without --checkpoint; an error with it)",
    )
    p.add_argument(
        '--use-ema',
        action='store_true',
        help="validate the EMA weights instead of the raw ones (a timm checkpoint's state_dict_ema)",
    )
    p.add_argument(
        '--model',
        '-m',
        default=None,
        help="the model (NAME or NAME.TAG); a timm file's default: its args.model, ours name theirs; without "
        "--checkpoint also 'all', a wildcard ('resnet*') or a file of names: each one's pretrained weights",
    )
    p.add_argument('--num-classes', type=int, default=None, help="default: the checkpoint's (checked when given)")
    p.add_argument(
        '--ema-index',
        type=int,
        default=None,
        metavar='I',
        help='with several EMAs: member I (0 = the first decay; default: the best one); implies --use-ema',
    )
    p.add_argument(
        '--split',
        default=None,
        help="split to validate (default: the run's --val-split, else 'validation'); "
        'a train split name validates the training images',
    )
    p.add_argument(
        '-b',
        '--batch-size',
        type=int,
        default=None,
        help=f"default: the run's validation batch size, else {DEFAULT_BATCH_SIZE}",
    )
    p.add_argument('--img-size', type=int, default=None, help="default: the model's test size, else the run's")
    p.add_argument('--input-size', type=int, nargs=3, default=None, metavar='N', help='3 N N: as --img-size N')
    p.add_argument('--crop-pct', type=float, default=None, help="default: the model's test crop_pct, else the run's")
    p.add_argument(
        '--use-train-size',
        action='store_true',
        help="the model's (or run's) train size and crop_pct even where the model has a test size, as timm",
    )
    p.add_argument(
        '--interpolation', default=None, metavar='NAME', help="default: the run's (bilinear, bicubic, lanczos, box)"
    )
    p.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help="default: the run's")
    p.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help="default: the run's")
    p.add_argument('-j', '--workers', type=int, default=None, help='decoding threads (default: sized to the host)')
    p.add_argument('--log-freq', type=int, default=10, help="timm's Test: line every N batches (default: 10)")
    p.add_argument('--device', default='', metavar='DEVICE', help='cpu, cuda (or gpu), tpu (default: JAX picks)')
    p.add_argument('--results-file', default='', help='also write the results to this file')
    p.add_argument('--results-format', default='csv', choices=('csv', 'json'))
    validate_options.add_arguments(p)  # --crop-mode, --crop-border-pixels, --test-pool, --retry
    validate_metrics.add_flags(p)  # --valid-labels, --real-labels, --metrics-avg
    return p


@functools.lru_cache(maxsize=8)
def _compiled_eval(
    model_name: str, num_classes: int, mean: tuple, std: tuple, arch=(), pool=None, valid=(), preds=False
):
    """The trainer's jitted eval step for this model, normalising with `mean`/`std` on the device (kept, so
    repeated calls in a notebook compile once); `pool`: timm's test-time pooling with that window; `valid`,
    `preds`: validate_metrics.restricted, eval_step's."""
    model = create_model(model_name, num_classes, **dict(arch))  # arch: the run's --gp / --in-chans / --bn-eps
    inputs = DeviceInput(mean=mean, std=std, in_chans=model.in_chans)
    apply_fn = validate_metrics.restricted(test_time_pool.pooled_apply(model, pool) if pool else model.apply, valid)
    return jax.jit(functools.partial(eval_step, apply_fn=apply_fn, inputs=inputs, preds=preds))


def validate(
    checkpoint,
    data=None,
    use_ema: bool = False,
    batch_size: int | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    split: str | None = None,
    workers: int | None = None,
    ema_index: int | None = None,
    interpolation: str | None = None,
    mean=None,
    std=None,
    dataset: str | None = None,
    input_key: str | None = None,
    target_key: str | None = None,
    dataset_download: bool = False,
    model: str | None = None,
    num_classes: int | None = None,
    log_freq: int = 0,
    use_train_size: bool = False,
    input_size=None,
    datasets: dict | None = None,
    crop_mode: str | None = None,
    crop_border_pixels: int | None = None,
    test_pool: bool = False,
    retry: bool = False,
    real_labels=None,
    valid_labels=None,
    metrics_avg: str | None = None,
) -> dict:
    """Evaluate a checkpoint's raw (or EMA) weights (`checkpoint` None: `model`'s pretrained weights) on DATA's
    split; returns timm-style results.

    Keys: model, top1, top1_err, top5, top5_err, loss, param_count (millions), img_size, crop_pct,
    interpolation, weights ('raw' / 'ema'), checkpoint (the step folder or file), data, split, num_images (and
    dataset for TFDS). None for a default means: from the run (args.yaml and the checkpoint's metadata) or the
    model, as in the CLI; the model's test size unless `use_train_size` (validate_weights.py). `datasets`: a
    dict shared by the calls of a sweep, so that checkpoints evaluated with one data config share one dataset.
    crop_mode, crop_border_pixels, test_pool, retry: timm's --crop-mode, --crop-border-pixels, --test-pool
    (test_time_pool.py) and --retry (on out-of-memory, smaller batches: validate_retry.py).
    `real_labels`, `valid_labels` (files or lists), `metrics_avg`: timm's flags (validate_metrics.py).
    """
    data, crop = None if data is None else str(data), validate_options.crop(crop_mode, crop_border_pixels)
    step_dir, metadata, variables = load_weights(checkpoint, use_ema, ema_index, model, num_classes)
    use_ema = metadata.get('weights', 'ema' if use_ema or ema_index is not None else 'raw') == 'ema'
    model_name, num_classes = metadata['model'], metadata['num_classes']
    valid, real = validate_metrics.prepare(valid_labels, real_labels, metrics_avg, num_classes)
    args = run_args(step_dir) if step_dir.is_dir() else {}
    flags = dict(
        img_size=img_size, input_size=input_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std
    )
    if step_dir.is_dir():
        flags = run_flags(step_dir, metadata, args, data, flags)
    resolved = resolve_data_config(model_name, **flags, use_test_size=not use_train_size)
    img_size, crop_pct = resolved['input_size'][-1], resolved['crop_pct']
    pool = test_time_pool.pool_size(model_name, resolved['input_size']) if test_pool else None
    crop_pct = 1.0 if pool else crop_pct  # timm's validate.py with test-time pooling
    interpolation, mean, std = resolved['interpolation'], resolved['mean'], resolved['std']
    if batch_size is None:
        run_batch = args.get('batch_size') and args['batch_size'] * jax.device_count()
        batch_size = args.get('validation_batch_size') or run_batch or DEFAULT_BATCH_SIZE
    if batch_size < 1:
        raise UserError(f'batch size must be positive, got {batch_size}; pass -b N with N >= 1')
    split = split or args.get('val_split', 'validation')
    args = dict(args, num_classes=len(valid) if valid else num_classes, dataset_download=dataset_download)
    for key, value in (('dataset', dataset), ('input_key', input_key), ('target_key', target_key)):
        if value is not None:  # else the run's
            args[key] = value
    if args.get('dataset') and data is None:
        data = args.get('data')  # the run's TFDS data_dir

    dataset = load_split(data, split, args, img_size, crop_pct, workers, interpolation, mean, std, datasets, crop)
    if note := data_fingerprint.resplit_warning(metadata.get('data'), dataset, split, args):
        log.warning(note)
    real = validate_metrics.check_dataset(dataset, num_classes, valid, real, step_dir, args, data)
    param_count = sum(int(np.size(x)) for x in jax.tree.leaves(variables['params']))
    log.info(
        'Model %s (%d classes) created, param count: %d; %s weights of %s',
        model_name,
        num_classes,
        param_count,
        'EMA' if use_ema else 'raw',
        step_dir,
    )
    log.info(
        'Validating %d images of split %r at %d px, crop_pct %g, %s, mean %s, std %s, batch size %d',
        dataset.num_examples,
        split,
        img_size,
        crop_pct,
        interpolation,
        mean,
        std,
        batch_size,
    )

    variables = jax.device_put(variables)  # once, not at every batch
    arch = tuple(arch_kwargs(metadata.get('model_kwargs')).items())
    keep = real is not None or bool(metrics_avg)  # each image's predictions, for real labels or metrics_avg
    eval_fn = _compiled_eval(
        split_model_name(model_name)[0],
        int(num_classes),
        dataset.device_input.mean,  # mean, std as the split's channels take them (one value for greyscale)
        dataset.device_input.std,
        arch,
        pool,
        valid or (),
        keep,
    )
    predictions, log_name = validate_metrics.Predictions(eval_fn), 'Test' if log_freq else None
    params, batch_stats = variables['params'], variables['batch_stats']
    metrics = validate_retry.run(  # retry: at smaller batch sizes while out of memory, each attempt afresh
        lambda b: evaluate(predictions.restart(), params, batch_stats, dataset, b, log_name, log_freq, cli=True),
        batch_size,
        retry,
    )
    metrics, extra = validate_metrics.scores(predictions, metrics, real, metrics_avg)
    results = dict(
        model=model_name,
        top1=metrics['top1'],
        top1_err=100.0 - metrics['top1'],
        top5=metrics['top5'],
        top5_err=100.0 - metrics['top5'],
        **extra,
        loss=metrics['loss'],
        param_count=round(param_count / 1e6, 2),
        img_size=int(img_size),
        crop_pct=float(crop_pct),
        interpolation=interpolation,
        weights='ema' if use_ema else 'raw',
        checkpoint=str(step_dir),
        data=data,
        split=split,
        num_images=dataset.num_examples,
    )
    if dataset.records is not None:
        results['dataset'] = args['dataset']
    if use_ema and saved_members(metadata) > 1:
        results['ema_index'] = metadata['ema_index']  # which of the run's EMAs
    log.info(validate_metrics.summary_line(results, metrics_avg))
    return results


def main(argv=None) -> int:
    def run():
        args = build_parser().parse_args(argv)
        if args.log_freq < 1:
            raise UserError(f'--log-freq must be positive, got {args.log_freq}')
        device.select(args.device)
        device.check(args.device)
        if args.data and args.data_dir and args.data != args.data_dir:
            raise UserError(f'DATA {args.data!r} and --data-dir {args.data_dir!r} differ; give one of them')
        if args.pretrained and args.checkpoint:  # timm: pretrained weights loaded, then all replaced (strict load)
            raise UserError(
                "--pretrained with --checkpoint: the checkpoint's weights replace every pretrained one (timm loads "
                'them strictly over the pretrained ones); leave out --pretrained, or --checkpoint to validate '
                'the pretrained weights'
            )
        targets = validate_bulk.targets(args.model, args.checkpoint)
        valid, real = validate_metrics.prepare(args.valid_labels, args.real_labels)  # read once, up front
        if args.results_file:
            validate_bulk.check_results_file(args.results_file)
        datasets = {}  # built once per data config for the whole sweep (the compiled eval: _compiled_eval)

        def validate_one(model, checkpoint):
            return validate(
                checkpoint,
                data=args.data or args.data_dir,
                use_ema=args.use_ema,
                batch_size=args.batch_size,
                img_size=args.img_size,
                crop_pct=args.crop_pct,
                split=args.split,
                workers=args.workers,
                ema_index=args.ema_index,
                interpolation=args.interpolation,
                mean=args.mean,
                std=args.std,
                dataset=args.dataset,
                input_key=args.input_key,
                target_key=args.target_key,
                dataset_download=args.dataset_download,
                model=model,
                num_classes=args.num_classes,
                log_freq=args.log_freq,
                use_train_size=args.use_train_size,
                input_size=args.input_size,
                datasets=datasets,
                crop_mode=args.crop_mode,
                crop_border_pixels=args.crop_border_pixels,
                test_pool=args.test_pool,
                retry=args.retry or targets is not None,  # timm retries each model of a bulk validation
                real_labels=real,
                valid_labels=valid,
                metrics_avg=args.metrics_avg,
            )

        if targets is None:
            results = validate_one(args.model, args.checkpoint[0] if args.checkpoint else None)
        else:
            save = args.results_file and (
                lambda r: validate_bulk.write_results(args.results_file, r, args.results_format)
            )
            results = validate_bulk.sweep(targets, validate_one, save or None)
        if args.results_file:
            validate_bulk.write_results(args.results_file, results, args.results_format)
        print(f'--result\n{json.dumps(results, indent=4)}', flush=True)
        return 0

    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
