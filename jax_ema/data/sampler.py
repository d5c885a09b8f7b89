"""--aug-repeats: timm's RepeatAugSampler (DeiT's repeated augmentation), as one global epoch plan.

timm (timm/data/distributed_sampler.py), per epoch: the shuffled indices, each repeated `repeats` times in a
row ([a, a, a, b, b, b, ...]; a fractional `repeats` takes indices[floor(i / repeats)] for i < ceil(repeats N));
replica r takes positions r, r + R, r + 2R, ... (wrapping around), the first `num_selected` of them, so the
copies of an image land on different replicas. Here the replicas are the data-parallel shards (jax's devices,
each fed batch_size rows, as timm's GPUs) and the shuffle is ours (a permutation of (seed, epoch), not timm's
torch.randperm of the epoch), so the whole plan is a pure function of (seed, epoch, replicas): a resume
redoes it exactly, on one process or several. Each copy is augmented with its own key.
"""

import math

import numpy as np

from jax_ema.errors import UserError

SELECTED_ROUND = 256  # timm's selected_round: per epoch, the dataset's size rounded down to a multiple of this


def lengths(num_examples: int, repeats: float, replicas: int) -> tuple[int, int]:
    """(total_size, num_selected) as timm's RepeatAugSampler: the repeated list padded to a multiple of the
    replicas, and the samples each replica draws per epoch (timm's len(sampler))."""
    num_samples = math.ceil(num_examples * repeats / replicas)
    if num_examples >= SELECTED_ROUND:
        selected = math.floor(num_examples // SELECTED_ROUND * SELECTED_ROUND / replicas)
    else:
        selected = math.ceil(num_examples / replicas)
    return num_samples * replicas, min(selected, num_samples)


def streams(order: np.ndarray, repeats: float, replicas: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, copy), each [replicas, num_selected]: the examples replica r visits in an epoch whose shuffled
    order is `order`, and which copy of that example each is (0 for its first slot in the epoch, 1 for the
    next, ...)."""
    n = len(order)
    if float(repeats).is_integer():
        repeated = np.repeat(order, int(repeats))
    else:
        repeated = order[(np.arange(math.ceil(repeats * n)) // repeats).astype(np.int64)]
    total, selected = lengths(n, repeats, replicas)
    padded = repeated[np.arange(total) % len(repeated)]
    copy = np.empty(total, np.int64)  # occurrences of the same example before each position
    by_example = np.argsort(padded, kind='stable')
    sorted_values = padded[by_example]
    group_start = np.searchsorted(sorted_values, sorted_values, side='left')
    copy[by_example] = np.arange(total) - group_start
    positions = np.arange(replicas)[:, None] + replicas * np.arange(selected)[None]  # r, r + R, ...
    return padded[positions], copy[positions]


def epoch_plan(order: np.ndarray, repeats: float, replicas: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, copy) of every row of the epoch's global batches, in order: in each global batch of
    `batch_size` rows, replica r's rows [r b, (r + 1) b), b = batch_size / replicas, hold its next b samples
    (the last partial batch dropped, as timm's drop_last)."""
    index, copy = streams(order, repeats, replicas)
    local = batch_size // replicas
    steps = index.shape[1] // local

    def layout(per_replica):  # [R, steps * b] -> [steps, R, b] -> rows
        return per_replica[:, : steps * local].reshape(replicas, steps, local).transpose(1, 0, 2).reshape(-1)

    return layout(index), layout(copy)


def steps_per_epoch(num_examples: int, repeats: float, replicas: int, batch_size: int) -> int:
    """Global batches per epoch: each replica's num_selected samples in batches of batch_size / replicas."""
    if batch_size % replicas:
        raise UserError(f'batch size {batch_size} does not divide among {replicas} devices; pass another -b')
    steps = lengths(num_examples, repeats, replicas)[1] // (batch_size // replicas)
    if steps < 1:
        raise UserError(
            f'--aug-repeats {repeats} leaves each of {replicas} devices fewer than '
            f'{batch_size // replicas} images per epoch; pass a smaller -b'
        )
    return steps
