"""timm validate.py's --valid-labels, --real-labels and --metrics-avg.

--valid-labels FILE: class indices, one a line. The model's logits are cut to those columns, in the file's
order, before the loss and the accuracies, so class i of the dataset is the model's class FILE[i] (how timm
evaluates a 1000-class model on the 200 classes of ImageNet-A or -R). The dataset must have len(FILE) classes.

--real-labels FILE: ImageNet's "ReaL" labels (`Are we done with ImageNet?`, Beyer et al. 2020), timm's
real.json: a JSON list whose entry i lists the labels of ILSVRC2012_val_{i+1:08d}.JPEG. Each image is matched
by its file name (a TFDS record by its `file_name` feature, as tfds/imagenet2012's); one with no real label is
left out. Top-1/top-5 become the share of the remaining images with a real label among their top-1/top-5
predictions, replacing the ordinary ones in the results and the ` * Acc@1` line, as timm's RealLabelsImagenet
(the `Test:` lines and the loss keep the dataset's labels). Images masked out as unreadable are left out here
and in the metrics below (timm's loader would put the next image in their place).

--metrics-avg micro|macro|weighted: precision, recall and F1-score of the top-1 predictions in percent, as timm
computes them (scikit-learn's precision_score, recall_score and f1_score with zero_division=0, over the classes
found among the targets or the predictions), under timm's keys `<avg>_precision`, `<avg>_recall`,
`<avg>_f1_score`, and appended to the ` * Acc@1` line. Unlike timm they are not rounded (as top-1 here).
"""

from __future__ import annotations

import json
import logging
import operator
import os

import jax
import numpy as np

from jax_ema.errors import UserError

log = logging.getLogger('jax_ema.validate')

METRICS_AVG = ('micro', 'macro', 'weighted')
REAL_NAME = 'ILSVRC2012_val_{:08d}.JPEG'  # entry i of real.json: image i + 1 of ImageNet's validation split


def _read(path, flag: str, what: str) -> str:
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, 'strerror', None) or type(e).__name__
        raise UserError(f'cannot read {flag} {str(path)!r} ({why}); give {what}') from None


def valid_labels(value) -> tuple[int, ...] | None:
    """--valid-labels: the class indices of a file (one a line) or a sequence; None where not given."""
    if value is None or (isinstance(value, str) and not value):
        return None
    if isinstance(value, (str, os.PathLike)):
        text = _read(value, '--valid-labels', 'a text file of class indices, one a line')
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        where = f'--valid-labels {str(value)!r}'
    else:
        lines, where = list(value), '--valid-labels'
    labels = []
    for line in lines:
        try:
            labels.append(int(line) if isinstance(line, str) else operator.index(line))  # not 2.7 as 2
        except (TypeError, ValueError):
            raise UserError(
                f'{where}: {line!r} is not a class index; write one class index (0, 1, ...) a line'
            ) from None
    if not labels:
        raise UserError(f'{where} lists no class index; write one class index (0, 1, ...) a line')
    if len(set(labels)) < len(labels):
        twice = next(i for i in labels if labels.count(i) > 1)
        raise UserError(f'{where} lists class {twice} twice; list each class once')
    return tuple(labels)


def check_valid_labels(labels: tuple[int, ...], num_classes: int) -> None:
    """UserError where an index of --valid-labels is not a class of the model."""
    outside = [i for i in labels if not 0 <= i < num_classes]
    if outside:
        raise UserError(
            f'--valid-labels: class index {outside[0]} is out of range for a model of {num_classes} classes '
            f'(0 to {num_classes - 1}); fix the file or pick the model it was written for'
        )


def real_labels(value) -> list[list[int]] | None:
    """--real-labels: timm's real.json (a path) or its list; None where not given."""
    if value is None or (isinstance(value, str) and not value):
        return None
    where = '--real-labels'
    if isinstance(value, (str, os.PathLike)):
        what = "ImageNet's real.json (a JSON list of label lists)"
        where = f'--real-labels {str(value)!r}'
        try:
            value = json.loads(_read(value, '--real-labels', what))
        except json.JSONDecodeError as e:
            raise UserError(f'{where} is not JSON ({e.msg}, line {e.lineno}); give {what}') from None
    ok = isinstance(value, list) and all(
        isinstance(labels, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in labels)
        for labels in value
    )
    if not ok or not value:
        raise UserError(
            f"{where} is not a non-empty list of lists of class indices; give ImageNet's real.json "
            '(entry i: the labels of ILSVRC2012_val_{i+1:08d}.JPEG)'
        )
    return value


def check_dataset(dataset, num_classes: int, valid, real, checkpoint, args: dict, data) -> list | None:
    """UserError where the split's classes are not the model's outputs (its classes, or those --valid-labels
    lists) or the split does not fit --real-labels; the real labels of its examples in order (None without)."""
    outputs = len(valid) if valid else num_classes
    if dataset.num_classes != outputs:
        where = args.get('dataset') or data or 'the built-in digits data (no DATA given)'
        if valid:
            raise UserError(
                f'{where} has {dataset.num_classes} classes but --valid-labels lists {outputs}; give DATA whose '
                'classes are those of the file, in its order'
            )
        trained = args.get('data') or 'the built-in digits data'
        hint = f' (the run trained on {trained})' if 'data' in args and args['data'] != data else ''
        raise UserError(
            f'{where} has {dataset.num_classes} classes but checkpoint {str(checkpoint)!r} was '
            f'trained for {num_classes}; give DATA with the same classes{hint}'
        )
    return None if real is None else real_labels_of(dataset, real, outputs)


def real_labels_of(dataset, labels: list[list[int]], num_outputs: int) -> list[list[int]]:
    """The real labels of each example of `dataset` in order, matched by file name as timm's (an image file's, or a
    TFDS record's `file_name` feature)."""
    records = getattr(dataset, 'records', None)
    if dataset.paths is None and not (records is not None and records.has_file_names):
        raise UserError(
            '--real-labels matches images by file name; this split has none (the built-in digits, or a TFDS '
            "dataset without a 'file_name' feature): give ImageNet's validation images (a folder or tfds/imagenet2012)"
        )
    if len(labels) != dataset.num_examples:
        raise UserError(
            f'--real-labels has labels for {len(labels)} images but the split has {dataset.num_examples}; '
            "it is for ImageNet's validation split (50,000 images): give that split, or the file made for this one"
        )
    if dataset.paths is None:
        log.info('Reading the file names of the %d records for --real-labels', dataset.num_examples)
    index = {REAL_NAME.format(i + 1): i for i in range(len(labels))}
    out = []
    for path in dataset.paths if dataset.paths is not None else records.file_names():
        name = os.path.basename(os.fsdecode(path))
        if name not in index:
            raise UserError(
                f'image {name!r} is not named as an ImageNet validation image (ILSVRC2012_val_00000001.JPEG to '
                f'{REAL_NAME.format(len(labels))}); --real-labels needs the ImageNet validation files'
            )
        out.append(labels[index[name]])
    if not any(out):
        raise UserError('--real-labels gives no real label to any image of the split; check the file')
    beyond = [i for entry in out for i in entry if i >= num_outputs]
    if beyond:
        raise UserError(
            f'--real-labels names class {beyond[0]} but the model has {num_outputs} outputs; give the real.json '
            'for these classes'
        )
    return out


def prepare(valid, real, average: str | None = None, num_classes: int | None = None):
    """(valid labels, real labels) read from files or given as lists, checked (None where not given)."""
    if average and average not in METRICS_AVG:
        raise UserError(f'--metrics-avg {average!r} is not one of {", ".join(METRICS_AVG)}')
    valid, real = valid_labels(valid), real_labels(real)
    if valid and num_classes is not None:
        check_valid_labels(valid, num_classes)
    return valid, real


def add_flags(parser) -> None:
    """timm validate.py's three flags, on validate's parser."""
    parser.add_argument(
        '--valid-labels', default='', metavar='FILE', help="class indices, one a line: the model's logits cut to them"
    )
    parser.add_argument(
        '--real-labels', default='', metavar='FILE', help="ImageNet's real.json: top-1/top-5 against the ReaL labels"
    )
    parser.add_argument(
        '--metrics-avg',
        default=None,
        choices=METRICS_AVG,
        help='also precision, recall and F1-score of the top-1 predictions, averaged so (as timm)',
    )


def restricted(apply_fn, labels: tuple[int, ...] = ()):
    """`apply_fn` whose logits are cut to the columns `labels` (all where empty)."""
    if not labels:
        return apply_fn
    columns = np.asarray(labels, np.int32)

    def apply(variables, images, train=False):
        return apply_fn(variables, images, train=train)[:, columns]

    return apply


class Predictions:
    """Wraps an eval step for step.evaluate: passes the sums on; where it was built with `preds=True`, keeps each
    batch's top-k predictions, labels and mask (left on the device until `arrays`)."""

    def __init__(self, step_fn):
        self.step_fn, self.batches = step_fn, []

    def __call__(self, params, batch_stats, batch):
        sums = dict(self.step_fn(params, batch_stats, batch))
        if 'pred' in sums:  # built with preds=True
            self.batches.append((sums.pop('pred'), batch['label'], batch['mask']))
        return sums

    def restart(self) -> Predictions:
        """Forget the kept batches (an evaluation that starts over, as validate's --retry does); returns self."""
        self.batches = []
        return self

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top-k [rows, k], labels [rows], mask [rows]) of every row in order, padded rows included."""
        if jax.process_count() > 1:  # global arrays: each process gets them whole
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

            fetched = [multihost_utils.process_allgather(b, tiled=True) for b in self.batches]
        else:
            fetched = jax.device_get(self.batches)
        return tuple(np.concatenate([np.asarray(b[i]) for b in fetched]) for i in range(3))


def real_accuracy(top: np.ndarray, mask: np.ndarray, real: list[list[int]], k: int) -> float:
    """Percent of the unmasked images with a real label that have one among their `k` best predictions."""
    hits = [bool(set(row[:k].tolist()) & set(labels)) for row, ok, labels in zip(top, mask, real) if ok and labels]
    if not hits:
        raise UserError('--real-labels gives no real label to any image validated; check the file')
    return 100.0 * float(np.mean(hits))


def precision_recall_f1(targets: np.ndarray, preds: np.ndarray, average: str) -> dict:
    """timm's `<average>_precision`, `_recall`, `_f1_score` in percent (scikit-learn's definitions, zero_division
    0, over the classes present in `targets` or `preds`)."""
    classes = np.union1d(targets, preds)
    t, p = np.searchsorted(classes, targets), np.searchsorted(classes, preds)
    hit = np.bincount(t[t == p], minlength=len(classes)).astype(np.float64)
    predicted = np.bincount(p, minlength=len(classes)).astype(np.float64)
    actual = np.bincount(t, minlength=len(classes)).astype(np.float64)
    if average == 'micro':
        hit, predicted, actual = hit.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True)

    def ratio(num, den):  # 0 where den is 0 (zero_division=0)
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    per_class = (ratio(hit, predicted), ratio(hit, actual), ratio(2 * hit, predicted + actual))
    weights = actual if average == 'weighted' else None
    names = ('precision', 'recall', 'f1_score')
    return {f'{average}_{n}': 100.0 * float(np.average(v, weights=weights)) for n, v in zip(names, per_class)}


def scores(predictions: Predictions, metrics: dict, real, average: str | None) -> tuple[dict, dict]:
    """(metrics with top1/top5 replaced by the real-label accuracies where `real` is given, timm's precision,
    recall and F1 keys where `average` is given)."""
    if real is None and not average:
        return metrics, {}
    top, labels, mask = predictions.arrays()
    mask = mask.astype(bool)
    if real is not None:
        metrics = dict(metrics, top1=real_accuracy(top, mask, real, 1), top5=real_accuracy(top, mask, real, 5))
    extra = precision_recall_f1(labels[mask], top[mask, 0], average) if average else {}
    return metrics, extra


def summary_line(results: dict, average: str | None = None) -> str:
    """timm validate.py's closing ` * Acc@1 ...` line, with its precision/recall/F1 part under --metrics-avg."""
    line = ' * Acc@1 {:.3f} ({:.3f}) Acc@5 {:.3f} ({:.3f})'.format(
        results['top1'], results['top1_err'], results['top5'], results['top5_err']
    )
    if average:
        line += ' | Precision({a}) {:.3f} | Recall({a}) {:.3f} | F1-score({a}) {:.3f}'.format(
            *(results[f'{average}_{n}'] for n in ('precision', 'recall', 'f1_score')), a=average
        )
    return line
