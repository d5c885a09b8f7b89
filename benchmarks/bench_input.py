"""The input pipeline's cost against timm's, measured side by side in one run, plus start-up.

    python benchmarks/bench_input.py [--data DIR] [--images 2000] [--rounds 5]
    python benchmarks/bench_input.py --quick     # a seconds-long smoke run (tests/test_benchmarks.py)

Without --data it writes an ImageNet-like folder first (--images JPEGs of 500x375 px, quality 90, smooth
colour fields with texture and grain, ~80-100 KB each, 10 classes). Four pipelines, each ours (tf.data,
jax_ema.data, uint8 batches, `-j 1`) against timm's uint8 path (the fast-collate worker that
`timm.data.create_loader(use_prefetcher=True)` runs, iterated without its device-side normalisation:
its underlying torch DataLoader), 32-image batches, one worker, bilinear, colour jitter off on both sides
unless said:

    train       random-resized crop to 224 + flip
    train_ra    + RandAugment rand-m9-mstd0.5 (random erasing, --reprob 0.25, runs on the device on both
                sides, after the hand-over: not part of this CPU cost)
    train_default  timm train.py's default: the crop at a random bilinear/bicubic filter, flip, ColorJitter 0.4
    train_hue   train_default with ColorJitter(0.4, 0.4, 0.4, 0.1): hue too (timm's transforms_imagenet_train)
    train_hue_kernels  train_hue, ours with the jitter in TensorFlow's kernels op by op (color.COMPILED off),
                the path before the compiled one
    eval        resize to 256 + centre crop 224 (crop_pct 0.875)

Each is timed in steady state (after `--warmup` batches) over `--batches` batches; images/s and images
per CPU-core-second (user + sys of every thread of this process and of its worker processes, psutil).
Variants alternate within each of `--rounds` rounds and the figures are medians over rounds, so drift in
the load of a shared machine hits all alike. Start-up: CPU-seconds to list a folder of `--listing-files`
empty .jpg files (nothing can be decoded) per 100k files, cold (empty cache) and warm.
Writes benchmarks/results/bench_input_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jax_ema import data  # noqa: E402  (imports tensorflow, after triton)
from jax_ema.data import color  # noqa: E402

RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
PIPELINES = {
    'train': {},
    'train_ra': {'auto_augment': 'rand-m9-mstd0.5'},
    'train_default': {'color_jitter': (0.4,), 'train_interpolation': 'random'},  # timm's train.py default
    'eval': {},
    'train_hue': {'color_jitter': (0.4, 0.4, 0.4, 0.1), 'train_interpolation': 'random'},
    'train_hue_kernels': {'color_jitter': (0.4, 0.4, 0.4, 0.1), 'train_interpolation': 'random'},
}
TIMM_KWARGS = {'train_default': dict(color_jitter=0.4, interpolation='random')}  # the same on timm's side
TIMM_KWARGS |= {k: dict(color_jitter=(0.4, 0.4, 0.4, 0.1), interpolation='random') for k in PIPELINES if 'hue' in k}
H200_STEP_RATES = {'float32': 3350, 'bfloat16': 5600}  # ResNet-50, batch 128, 224 px (issue 14)
FULL = dict(images=2000, rounds=5, batches=20, warmup=3, batch_size=32, img_size=224, listing_files=50_000)
QUICK = dict(images=40, rounds=1, batches=1, warmup=1, batch_size=8, img_size=64, listing_files=2000)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='an image folder (DATA/train/<class>/...); default: generate one')
    p.add_argument('--quick', action='store_true', help='a seconds-long smoke run')
    for name, value in FULL.items():
        p.add_argument('--' + name.replace('_', '-'), type=int, default=None, help=f'default {value}')
    p.add_argument('--out', default=os.path.join(RESULTS, 'bench_input_cpu.json'))
    p.add_argument('--only', nargs='+', choices=list(PIPELINES), help='these pipelines only (default: all)')
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = args.only or list(PIPELINES)
    return args


# --- the folder ---------------------------------------------------------------------------------------


def write_jpeg(path: str, seed: int, size=(500, 375), quality: int = 90) -> None:
    """One ImageNet-like JPEG: soft colour blobs and ramps, mid-frequency texture, fine grain."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32) + 128
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 200)
        image += rng.uniform(-120, 120, 3) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))[..., None]
    image += rng.uniform(-60, 60, 3) * (xs / width)[..., None]
    texture = rng.normal(0, 50, (height // 4 + 1, width // 4 + 1, 3))
    image += np.kron(texture, np.ones((4, 4, 1)))[:height, :width] + rng.normal(0, 13, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH).save(
        path, 'JPEG', quality=quality
    )


def make_folder(root: str, images: int, classes: int = 10) -> str:
    """root/train/<class>/*.jpg, and root/validation the same files (a link): one set for every pipeline."""
    for i in range(images):
        folder = os.path.join(root, 'train', f'class{i % classes}')
        os.makedirs(folder, exist_ok=True)
        write_jpeg(os.path.join(folder, f'img{i:06d}.jpg'), seed=i)
    os.symlink('train', os.path.join(root, 'validation'))
    return root


# --- timing ---------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """user + sys of this process (all threads) and of its children, alive or reaped."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


def steady(batches, size_of, warmup: int, count: int) -> dict:
    """Images/s and images per CPU-core-second over `count` batches after `warmup`."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    cpu0, wall0, images = cpu_seconds(), time.perf_counter(), 0
    for _ in range(count):
        images += size_of(next(iterator))
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    del iterator  # timm: its worker exits now
    return {'images_per_s': images / wall, 'images_per_core_s': images / max(cpu, 1e-9)}


def ours(args, name: str, epoch: int):
    color.COMPILED = not name.endswith('_kernels')  # read when the pipeline is traced, below
    cfg = data.DataConfig(data_dir=args.data, img_size=args.img_size, num_workers=1, **PIPELINES[name])
    train, val = data.load_datasets(cfg)
    if name == 'eval':
        return val.eval_batches(args.batch_size)
    return train.train_batches(args.batch_size, epoch)


def timm_batches(args, name: str):
    import torch
    from timm.data import ImageDataset, create_loader

    split = os.path.join(args.data, 'train')
    loader = create_loader(
        ImageDataset(split),
        (3, args.img_size, args.img_size),
        args.batch_size,
        is_training=name != 'eval',
        use_prefetcher=True,
        auto_augment=PIPELINES[name].get('auto_augment'),
        crop_pct=0.875,
        num_workers=1,
        persistent_workers=False,
        device=torch.device('cpu'),
        **{**dict(color_jitter=None, interpolation='bilinear'), **TIMM_KWARGS.get(name, {})},
    )
    return loader.loader  # the DataLoader under the PrefetchLoader: uint8 NCHW, before normalisation


def bench_pipelines(args) -> dict:
    samples = {f'{side}_{name}': [] for name in args.only for side in ('ours', 'timm')}
    for round_ in range(args.rounds):
        for name in args.only:
            for side in ('ours', 'timm'):
                if side == 'ours':
                    batches, size_of = ours(args, name, round_), lambda b: len(b['label'])
                else:
                    batches, size_of = timm_batches(args, name), lambda b: len(b[1])
                samples[f'{side}_{name}'].append(steady(batches, size_of, args.warmup, args.batches))
                log(f'round {round_} {side} {name}: {samples[f"{side}_{name}"][-1]}')
    medians = {
        k: {m: statistics.median(s[m] for s in v) for m in ('images_per_s', 'images_per_core_s')}
        for k, v in samples.items()
    }
    ratios = {
        name: {
            m: medians[f'ours_{name}'][m] / medians[f'timm_{name}'][m] for m in ('images_per_core_s', 'images_per_s')
        }
        for name in args.only
    }
    return {'samples': samples, 'medians': medians, 'ours_vs_timm': ratios}


# --- start-up ---------------------------------------------------------------------------------------------


def bench_startup(args, work: str) -> dict:
    """CPU-seconds of load_datasets on a folder of empty .jpg files (decoding any would fail), per 100k."""
    root = os.path.join(work, 'listing')
    per_class = max(1, args.listing_files // 100)
    for c in range(100):
        folder = os.path.join(root, 'train', f'n{c:08d}')
        os.makedirs(folder)
        for i in range(per_class):
            open(os.path.join(folder, f'n{c:08d}_{i}.JPEG'), 'wb').close()
    os.symlink('train', os.path.join(root, 'validation'))
    cfg, figures = data.DataConfig(data_dir=root), {}
    for state in ('cold', 'warm'):
        start = resource.getrusage(resource.RUSAGE_SELF)
        train, val = data.load_datasets(cfg)
        end = resource.getrusage(resource.RUSAGE_SELF)
        seconds = end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime
        figures[f'{state}_cpu_s_per_100k_files'] = seconds * 100_000 / (train.num_examples + val.num_examples)
    figures['files'] = train.num_examples + val.num_examples
    return figures


# --- the report ---------------------------------------------------------------------------------------------


def log(message):
    print(message, file=sys.stderr, flush=True)


def versions() -> dict:
    import jax
    import PIL
    import tensorflow as tf
    import timm
    import torch

    return dict(
        jax=jax.__version__,
        tensorflow=tf.__version__,
        torch=torch.__version__,
        timm=timm.__version__,
        pillow=PIL.__version__,
        python=platform.python_version(),
    )


def commit() -> str:
    try:
        head = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ['git', 'status', '--porcelain', '--untracked-files=no'],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return head + ('+dirty' if dirty else '')


def machine() -> dict:
    model = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
    except OSError:
        pass
    return dict(
        cpu=model,
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        system=platform.system(),
        load_average=list(os.getloadavg()),
    )


def main(argv=None) -> dict:
    args = parse(argv)
    work = tempfile.mkdtemp(prefix='bench_input_')
    cache = os.environ.get(data.folder.CACHE_ENV)
    os.environ[data.folder.CACHE_ENV] = os.path.join(work, 'cache')  # cold means cold
    try:
        if args.data is None:
            log(f'writing {args.images} JPEGs under {work}/data ...')
            args.data = make_folder(os.path.join(work, 'data'), args.images)
        report = dict(
            settings={k: getattr(args, k) for k in FULL} | {'data': args.data, 'workers': 1, 'pipelines': args.only},
            machine=machine(),
            versions=versions(),
            commit=commit(),
        )
        report.update(bench_pipelines(args))
        report['startup'] = bench_startup(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cache is None:
            os.environ.pop(data.folder.CACHE_ENV)
        else:
            os.environ[data.folder.CACHE_ENV] = cache
    per_core = {name: report['medians'][f'ours_{name}']['images_per_core_s'] for name in args.only}
    report['estimate_16_cores'] = {
        name: {'images_per_s': 16 * rate, **{f'vs_h200_{k}': 16 * rate / v for k, v in H200_STEP_RATES.items()}}
        for name, rate in per_core.items()
    }
    report['targets'] = {
        f'{name} >= 1.0x timm per core-second': report['ours_vs_timm'][name]['images_per_core_s'] >= 1.0
        for name in args.only
    } | {'start-up warm <= 2 CPU-s per 100k files': report['startup']['warm_cpu_s_per_100k_files'] <= 2.0}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print_report(report)
    return report


def print_report(r):
    print(
        f'{"pipeline":<14}{"ours img/core-s":>17}{"timm img/core-s":>17}{"ratio":>8}{"ours img/s":>12}'
        f'{"timm img/s":>12}'
    )
    for name in r['ours_vs_timm']:
        o, t = r['medians'][f'ours_{name}'], r['medians'][f'timm_{name}']
        print(
            f'{name:<14}{o["images_per_core_s"]:>17.0f}{t["images_per_core_s"]:>17.0f}'
            f'{r["ours_vs_timm"][name]["images_per_core_s"]:>8.2f}{o["images_per_s"]:>12.0f}{t["images_per_s"]:>12.0f}'
        )
    s = r['startup']
    print(
        f'start-up, CPU-s per 100k files: cold {s["cold_cpu_s_per_100k_files"]:.2f}, '
        f'warm {s["warm_cpu_s_per_100k_files"]:.2f} ({s["files"]} files listed, none decoded)'
    )


if __name__ == '__main__':
    main()
