"""--save-images: the training batches as timm saves them for debugging, at its log points (update 0, every
--log-interval and the epoch's last), a PNG grid of 8 images a row in the run folder, train-batch-<update>.png
(overwritten by the next epoch, as timm's). The images are the augmented uint8 pixels before normalising."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jax_ema.reporting import write_atomic

ROW = 8  # torchvision's save_image nrow default, which timm uses


def grid(images: np.ndarray, row: int = ROW) -> np.ndarray:
    """[N, H, W, C] uint8 -> one [rows * H, row * W, C] image, row-major, the last row padded with black."""
    n, h, w, c = images.shape
    rows = -(-n // row)
    padded = np.zeros((rows * row, h, w, c), images.dtype)
    padded[:n] = images
    return padded.reshape(rows, row, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, row * w, c)


def save_grid(path: Path, images: np.ndarray) -> None:
    import io

    from PIL import Image

    pixels = grid(np.asarray(images, np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format='PNG')
    write_atomic(path, buffer.getvalue())


def saving(batches, run_dir, first: int, updates_per_epoch: int, log_interval: int) -> Iterator[dict]:
    """`batches` (update `first` on) passed through, each one at a log point saved on the way."""
    for update, batch in enumerate(batches, start=first):
        if update % log_interval == 0 or update == updates_per_epoch - 1:
            save_grid(Path(run_dir) / f'train-batch-{update}.png', batch['image'])
        yield batch
