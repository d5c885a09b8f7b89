"""The device's end of the input pipeline: uint8 batches prefetched onto the mesh, then normalised and
randomly erased inside the jitted steps, as timm's PrefetchLoader does on the GPU.

The host pipeline (jax_ema/data, tf.data) hands over uint8 NHWC batches: a quarter of float32's bytes,
and no per-pixel float work on the CPU. Random erasing works in normalised space, so it runs here too;
its draws are a pure function of (seed, optimizer update, row of the global batch), hence of (seed,
epoch, example index), on any number of devices or processes and after a resume. No TensorFlow here:
the steps must import on a GPU image without it.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import jax.numpy as jnp

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data.constants
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
ERASING_MODES = ('const', 'rand', 'pixel')
MIN_AREA, MAX_AREA = 0.02, 1 / 3  # timm's RandomErasing defaults, which its train.py keeps
MIN_ASPECT = 0.3
_TRIES = 10


@dataclasses.dataclass(frozen=True)
class DeviceInput:
    """What the steps do to a uint8 batch: (x - 255 mean) / (255 std) per channel, then (training only)
    timm's RandomErasing(reprob, mode=remode, max_count=recount) keyed by `seed`. in_chans 1: the RGB batch
    is first made greyscale as PIL's convert('L'), which timm applies to every image for a 1-channel model."""

    mean: tuple = IMAGENET_DEFAULT_MEAN
    std: tuple = IMAGENET_DEFAULT_STD
    reprob: float = 0.0
    remode: str = 'pixel'
    recount: int = 1
    seed: int = 0
    in_chans: int = 3


def greyscale(images):
    """uint8 RGB NHWC -> uint8 NHW1 as PIL's convert('L'): (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    rgb = images.astype(jnp.int32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (luma >> 16).astype(jnp.uint8)[..., None]


def normalize(images, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, in_chans: int = 3):
    """uint8 NHWC -> float32 (x - 255 mean) / (255 std), as timm's prefetcher. Float images are taken
    as normalised already and returned as they are (tests and notebooks feed such batches)."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    if in_chans == 1 and images.shape[-1] == 3:
        images, mean, std = greyscale(images), mean[:1], std[:1]
    mean = jnp.asarray(mean, jnp.float32) * 255.0
    std = jnp.asarray(std, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - mean) / std


def train_images(images, inputs: DeviceInput | None, update, mix=None, erase_first: bool = False):
    """The model's input for the training step at optimizer update `update` (before it). `mix` (mixup.py),
    if given, mixes the normalised batch before random erasing, as timm's prefetcher orders them
    (`erase_first`: after it, as timm's loader without the prefetcher, --no-prefetcher)."""
    inputs = inputs or DeviceInput()
    is_uint8 = not jnp.issubdtype(images.dtype, jnp.floating)
    images = normalize(images, inputs.mean, inputs.std, inputs.in_chans)
    if mix is not None and not erase_first:
        images = mix(images)
    if is_uint8 and inputs.reprob > 0:
        keys = erasing_keys(inputs.seed, update, images.shape[0])
        images = jax.vmap(lambda image, key: random_erasing(image, key, inputs.reprob, inputs.remode, inputs.recount))(
            images, keys
        )
    if mix is not None and erase_first:
        images = mix(images)
    return images


def eval_images(images, inputs: DeviceInput | None):
    inputs = inputs or DeviceInput()
    return normalize(images, inputs.mean, inputs.std, inputs.in_chans)


def erasing_keys(seed: int, update, rows: int):
    """One key per row of the batch of optimizer update `update`: a stream of its own under `seed`
    (the step's dropout keys fold the update into PRNGKey(seed) itself)."""
    stream = jax.random.split(jax.random.PRNGKey(seed))[1]
    update_key = jax.random.fold_in(stream, update)
    return jax.vmap(lambda row: jax.random.fold_in(update_key, row))(jnp.arange(rows))


def _box(key, height: int, width: int, count):
    """(top, left, h, w) of one box as timm's RandomErasing._erase tries it; h = w = 0 if no try fits."""
    area_key, aspect_key, top_key, left_key = jax.random.split(key, 4)
    area = jax.random.uniform(area_key, (_TRIES,), minval=MIN_AREA, maxval=MAX_AREA) * (height * width) / count
    aspect = jnp.exp(
        jax.random.uniform(aspect_key, (_TRIES,), minval=math.log(MIN_ASPECT), maxval=-math.log(MIN_ASPECT))
    )
    box_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    box_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (box_w < width) & (box_h < height)
    first = jnp.argmax(fits)
    found = jnp.any(fits)
    box_h, box_w = jnp.where(found, box_h[first], 0), jnp.where(found, box_w[first], 0)
    top = jax.random.randint(top_key, (), 0, height - box_h + 1)  # randint(0, H - h), ends included
    left = jax.random.randint(left_key, (), 0, width - box_w + 1)
    return top, left, box_h, box_w


def random_erasing(image, key, prob: float, mode: str, max_count: int):
    """timm's RandomErasing(prob, mode=mode, max_count=max_count) of one normalised [H, W, C] image.

    With probability `prob` the image gets `count` boxes, count uniform in 1..max_count. Each box tries
    ten times for area ~ U(0.02, 1/3) * H * W / count and log aspect ~ U(log 0.3, log 1/0.3), h and w
    rounded; the first try strictly smaller than the image is placed uniformly and filled with per-pixel
    normal noise ('pixel'), one normal colour ('rand') or zeros ('const').
    """
    height, width, channels = image.shape
    erase_key, count_key, key = jax.random.split(key, 3)
    erase = jax.random.uniform(erase_key) < prob
    count = jax.random.randint(count_key, (), 1, max_count + 1)
    rows, cols = jnp.arange(height)[:, None, None], jnp.arange(width)[None, :, None]
    for i, box_key in enumerate(jax.random.split(key, max_count)):
        geometry_key, fill_key = jax.random.split(box_key)
        top, left, box_h, box_w = _box(geometry_key, height, width, count)
        if mode == 'pixel':
            fill = jax.random.normal(fill_key, image.shape, image.dtype)
        elif mode == 'rand':
            fill = jax.random.normal(fill_key, (1, 1, channels), image.dtype)
        else:
            fill = jnp.zeros((), image.dtype)
        inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
        image = jnp.where(erase & (i < count) & inside, fill, image)
    return image


def prefetch(batches, put, size: int = 2):
    """`put(batch)` (e.g. parallel.shard_batch: an asynchronous copy onto the mesh) of each batch,
    `size` batches ahead: the next batches travel to the device while the current step runs."""
    queue = collections.deque()
    iterator = iter(batches)
    for batch in iterator:
        queue.append(put(batch))
        if len(queue) == size:
            break
    while queue:
        yield queue.popleft()
        for batch in iterator:
            queue.append(put(batch))
            break
