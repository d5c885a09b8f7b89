"""Where timm's default train augmentation spends its CPU time in our pipeline, per 224 px image, by op.

    python benchmarks/profile_default_aug.py [--data DIR] [--repeats 200]

One thread (as each tf.data map call), each op alone in a tf.function called `--repeats` times, process CPU
time per call minus that of an empty call (the Python dispatch, which tf.data does not pay); the minimum of 3
rounds. Inputs: a 300x260 crop window of a JPEG of DIR (default: one written like bench_input's), the 224 px
image. Prints milliseconds per op.
"""

import argparse
import os
import resource
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jax_ema import data  # noqa: E402  (imports tensorflow, after triton)
from jax_ema.data import color, image_ops, transforms  # noqa: E402

tf = data.tf
NAMES = (
    'decode the 300x260 window (JPEG)',
    'resize bilinear 300x260 -> 224',
    'resize bicubic 300x260 -> 224',
    'horizontal flip',
    'ColorJitter draws (order, factors)',
    'ColorJitter 0.4, compiled (uint8)',
    'ColorJitter 0.4, TF kernels (float32)',
    '  brightness, TF kernels',
    '  contrast, TF kernels',
    '  saturation, TF kernels',
    'uint8 -> float32 -> uint8',
)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_call_ms(fn, args, repeats):
    """Minimum over 3 rounds of the CPU milliseconds per call of tf.function(fn)(*args)."""
    compiled = tf.function(fn)
    for _ in range(5):
        compiled(*args)
    rounds = []
    for _ in range(3):
        start = cpu_seconds()
        for _ in range(repeats):
            compiled(*args)
        rounds.append((cpu_seconds() - start) * 1e3 / repeats)
    return min(rounds)


def ops(jpeg):
    """{name: (fn, args)} of the default augmentation's steps, in NAMES' order."""
    window = transforms.decode_window(jpeg, lambda h, w: (20, 30, 300, 260))[0]
    image = transforms.resize(window, (224, 224))
    pixels = tf.cast(image, tf.float32)
    key, size = tf.constant([1, 2], tf.int64), tf.constant([224, 224])
    ranges = color.jitter_ranges((0.4,))
    order, factors = tf.constant([0, 1, 2, 3]), [tf.constant(f, tf.float64) for f in (1.2, 0.8, 1.3, 0.0)]
    steps = [
        (lambda d: transforms.decode_window(d, lambda h, w: (20, 30, 300, 260)), (jpeg,)),
        (lambda w: transforms.resize(w, size, 'bilinear'), (window,)),
        (lambda w: transforms.resize(w, size, 'bicubic'), (window,)),
        (lambda x: tf.reverse(x, [1]), (image,)),
        (lambda k: color.draw_jitter(k, ranges)[:2], (key,)),
        (lambda x: color.jitter(x, order, factors, ranges), (image,)),
        (lambda x: color.jitter_kernels(x, order, factors, ranges), (pixels,)),
        (lambda x: image_ops.brightness(x, 1.2), (pixels,)),
        (lambda x: image_ops.contrast(x, 0.8), (pixels,)),
        (lambda x: image_ops.color(x, 1.3), (pixels,)),
        (lambda x: tf.cast(tf.cast(x, tf.float32), tf.uint8), (image,)),
    ]
    return dict(zip(NAMES, steps))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='a folder of JPEGs (the first one found is used)')
    p.add_argument('--repeats', type=int, default=200)
    args = p.parse_args(argv)
    try:  # one thread, as each tf.data map call
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow ran already in this process (as in the tests): its thread pools stay
        print('note: TensorFlow already initialised, its thread settings kept', file=sys.stderr)
    path = None
    if args.data:
        path = next(
            os.path.join(d, f) for d, _, fs in sorted(os.walk(args.data)) for f in sorted(fs) if f.endswith('.jpg')
        )
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_input import write_jpeg

        path = os.path.join(tempfile.mkdtemp(prefix='profile_aug_'), 'image.jpg')
        write_jpeg(path, seed=0)
    jpeg = tf.io.read_file(path)
    empty = per_call_ms(lambda x: x, (jpeg,), args.repeats)
    print(f'{"op (one thread, CPU ms per image)":<42}{"ms":>8}')
    for name, (fn, fn_args) in ops(jpeg).items():
        print(f'{name:<42}{per_call_ms(fn, fn_args, args.repeats) - empty:>8.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
