"""What data a run trained on, in a few bytes: checkpoints record it, and a resume compares it with today's data.

A fingerprint holds the class names and, per split, the number of examples, the count per class and a
SHA-256 of the sorted (relative path, size in bytes) of its files (of its labels where there are no files,
as for the built-in digits). A TFDS split's labels are not read up front: its per-class count is None and its
SHA-256 covers the dataset's name and version, the split and the files (name, slice read, size).
Any data source builds it with `fingerprint`; `of_datasets` does it for the
trainer's folder and digits datasets (one stat per file, no image read). No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np


def file_entries(paths: Sequence[str]) -> list[tuple[str, int]]:
    """(path relative to the files' common folder, size in bytes) of each file: a moved copy has the same entries."""
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [(os.path.relpath(p, root).replace(os.sep, '/'), _size(p)) for p in paths]


def _size(path: str) -> int:
    """The file's size; -1 for one listed (a cached listing) but gone: the input pipeline skips it later."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def fingerprint(class_names: Sequence[str], splits: dict) -> dict:
    """{'classes': [...], '<split>': {'count', 'per_class', 'sha256'}} of `splits`: name -> (labels, entries),
    entries being (name, size) pairs of the split's files (any order) or None where the split has no files;
    labels may be the number of examples instead, where they are not known up front (per_class is then None)."""
    result = {'classes': [str(c) for c in class_names]}
    for name, (labels, entries) in splits.items():
        known = not isinstance(labels, int)
        labels = np.asarray(labels, np.int64)
        digest = hashlib.sha256()
        if entries is None:
            digest.update(labels.tobytes())
        else:
            for rel, size in sorted(entries):
                digest.update(f'{rel}\0{size}\n'.encode('utf-8', 'surrogateescape'))
        result[name] = {
            'count': int(labels.size) if known else int(labels),
            'per_class': np.bincount(labels, minlength=len(class_names)).tolist() if known else None,
            'sha256': digest.hexdigest(),
        }
    return result


def of_datasets(train, val) -> dict:
    """The fingerprint of the trainer's two splits (jax_ema.data.Dataset: class_names, labels, paths, records)."""
    return fingerprint(train.class_names, {split: _split(ds) for split, ds in (('train', train), ('validation', val))})


def _split(ds) -> tuple:
    """(labels or count, file entries or None) of one split."""
    records = getattr(ds, 'records', None)
    if records is not None:  # TFDS: the dataset and split named, each file with the slice of it read
        return ds.num_examples, [(records.name, 0), *records.entries()]
    return ds.labels, None if ds.paths is None else file_entries(ds.paths)


def changes(saved: dict | None, current: dict, split: str) -> list[str]:
    """What differs in `split` between a checkpoint's fingerprint and today's, in words ([] when nothing does,
    or when the checkpoint recorded no fingerprint)."""
    if not saved or split not in saved:
        return []
    before, now = saved[split], current[split]
    found = ['the class names'] if saved.get('classes') != current.get('classes') else []
    if before['count'] != now['count']:
        found.append(f'{before["count"]} -> {now["count"]} images')
    elif before['per_class'] != now['per_class']:
        found.append('the images per class')
    elif before['sha256'] != now['sha256']:
        found.append('the file names or sizes')
    return found


def resplit_warning(saved: dict | None, dataset, split: str, run_args: dict) -> str | None:
    """validate: a line when `dataset`, the run's `split` of class folders split by --val-split-fraction (its
    args.yaml: `run_args`), is not what the run recorded: drawn anew from changed folders, it may mix the splits."""
    name = {run_args.get('val_split', 'validation'): 'validation', run_args.get('train_split', 'train'): 'train'}
    if getattr(dataset, 'source', None) != 'folders' or split not in name:
        return None
    found = changes(saved, fingerprint(dataset.class_names, {name[split]: _split(dataset)}), name[split])
    if not found:
        return None
    return (
        f'DATA changed since the run ({name[split]} split: {", ".join(found)}); its validation split is drawn anew '
        'from the class folders (--val-split-fraction), so it may now hold images the run trained on'
    )


def next_epoch_start(metadata: dict, updates_per_epoch: int) -> tuple[int, int]:
    """(epoch, update count at its start under `updates_per_epoch`) of the first epoch a checkpoint had not
    begun: a run whose data or batch changed goes on from there, as timm's would after its own restart."""
    epoch = int(metadata.get('epoch') or 0) + (1 if int(metadata.get('position') or 0) > 0 else 0)
    return epoch, epoch * updates_per_epoch
