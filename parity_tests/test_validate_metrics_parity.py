"""validate's --valid-labels, --real-labels and --metrics-avg score logits as timm's validate.py does: the same
logits and targets through our eval step (step.eval_step with validate_metrics.restricted, step.evaluate,
validate_metrics.Predictions and scores) and through timm's own pieces as its validate.py calls them
(`output[:, valid_labels]`, timm.utils.accuracy, nn.CrossEntropyLoss, timm.data.RealLabelsImagenet with a real.json
the test writes, scikit-learn's precision/recall/F1 with zero_division=0).

The "model" is the identity: the batches carry the logits as float images (device_input passes float images on).
"""

import functools
import importlib.util
import json

import jax
import numpy as np
import pytest
import torch
from timm.data import RealLabelsImagenet
from timm.utils import accuracy

from jax_ema import validate_metrics
from jax_ema.step import eval_step, evaluate

BATCH = 8
# timm's validate.py computes --metrics-avg with scikit-learn, and without it warns and computes none (the GPU image
# of issue 15 has no scikit-learn): there only the accuracies, the loss and the real labels are compared
HAS_SKLEARN = importlib.util.find_spec('sklearn') is not None


class Logits:
    """A split whose images are logits: eval_batches as data.Dataset's (the last batch padded, mask False)."""

    def __init__(self, logits, labels, paths):
        self.logits, self.labels, self.paths = logits.astype(np.float32), labels.astype(np.int32), paths
        self.num_examples, self.num_classes = len(labels), int(labels.max()) + 1

    def eval_batches(self, batch_size, process_index=0, process_count=1):
        for start in range(0, self.num_examples, batch_size):
            image, label = self.logits[start : start + batch_size], self.labels[start : start + batch_size]
            pad = batch_size - len(label)
            yield {
                'image': np.pad(image, ((0, pad), (0, 0))),
                'label': np.pad(label, (0, pad)),
                'mask': np.arange(batch_size) < len(label),
            }


def _ours(split, valid, real_json, average):
    valid, real = validate_metrics.prepare(valid, real_json, average, split.logits.shape[1])
    real = validate_metrics.check_dataset(split, split.logits.shape[1], valid, real, 'ckpt', {}, 'DATA')
    apply_fn = validate_metrics.restricted(lambda variables, x, train=False: x, valid or ())
    step_fn = jax.jit(functools.partial(eval_step, apply_fn=apply_fn, preds=True))
    predictions = validate_metrics.Predictions(step_fn)
    metrics = evaluate(predictions, {}, {}, split, BATCH)
    metrics, extra = validate_metrics.scores(predictions, metrics, real, average)
    return dict(metrics, **extra)


def _timms(split, valid, real_json, average):
    """timm validate.py's loop and closing numbers, on the same logits."""
    real = RealLabelsImagenet([p.rsplit('/', 1)[-1] for p in split.paths], real_json=real_json) if real_json else None
    criterion = torch.nn.CrossEntropyLoss()
    loss_sum = top1_sum = top5_sum = 0.0
    preds, targets = [], []
    for start in range(0, split.num_examples, BATCH):
        output = torch.from_numpy(split.logits[start : start + BATCH])
        target = torch.from_numpy(split.labels[start : start + BATCH]).long()
        if valid is not None:
            output = output[:, valid]
        if real is not None:
            real.add_result(output)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        n = output.shape[0]
        loss_sum += criterion(output, target).item() * n
        top1_sum, top5_sum = top1_sum + acc1.item() * n, top5_sum + acc5.item() * n
        preds.append(torch.argmax(output, dim=1))
        targets.append(target)
    out = dict(
        loss=loss_sum / split.num_examples, top1=top1_sum / split.num_examples, top5=top5_sum / split.num_examples
    )
    if real is not None:
        out.update(top1=real.get_accuracy(k=1), top5=real.get_accuracy(k=5))
    preds, targets = torch.cat(preds).numpy(), torch.cat(targets).numpy()
    if not HAS_SKLEARN:
        return out
    from sklearn.metrics import f1_score, precision_score, recall_score

    for name, fn in (('precision', precision_score), ('recall', recall_score), ('f1_score', f1_score)):
        out[f'{average}_{name}'] = 100 * fn(targets, preds, average=average, zero_division=0)
    return out


def _split(seed, n, outputs, data_classes, skew=0.0):
    """`n` random logits over `outputs` classes (`skew` pushes them toward the first ones: classes never
    predicted) and labels over `data_classes`, with ImageNet file names in a shuffled order."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, outputs)) - skew * np.arange(outputs)
    labels = rng.integers(0, data_classes, size=n)
    labels[:data_classes] = np.arange(data_classes)  # every class present
    numbers = rng.permutation(n) + 1
    return Logits(logits, labels, [f'/data/val/c/ILSVRC2012_val_{i:08d}.JPEG' for i in numbers])


def _real_json(path, seed, n, outputs):
    rng = np.random.default_rng(seed)
    labels = [sorted(set(rng.integers(0, outputs, size=rng.integers(0, 4)).tolist())) for _ in range(n)]
    path.write_text(json.dumps(labels))
    return str(path)


CASES = {  # name: (seed, images, model outputs, data classes, skew, valid labels)
    'plain': (0, 45, 10, 10, 0.0, None),
    'skewed': (1, 37, 12, 12, 0.4, None),  # some classes never predicted: zero_division
    'valid_labels': (2, 45, 20, 6, 0.0, [17, 3, 9, 0, 12, 5]),
}


@pytest.mark.parametrize('average', validate_metrics.METRICS_AVG)
@pytest.mark.parametrize('with_real', [False, True], ids=['', 'real'])
@pytest.mark.parametrize('case', list(CASES))
def test_scores_as_timms(tmp_path, case, with_real, average):
    seed, n, outputs, data_classes, skew, valid = CASES[case]
    split = _split(seed, n, outputs, data_classes, skew)
    real_json = _real_json(tmp_path / 'real.json', seed, n, len(valid or range(outputs))) if with_real else None
    ours, timms = _ours(split, valid, real_json, average), _timms(split, valid, real_json, average)
    assert {f'{average}_precision', f'{average}_recall', f'{average}_f1_score'} <= set(ours)
    ours = ours if HAS_SKLEARN else {k: v for k, v in ours.items() if not k.startswith(average)}
    assert set(ours) == set(timms)
    assert ours == pytest.approx(timms, rel=1e-6, abs=1e-9), (ours, timms)
    for key in (f'{average}_precision', f'{average}_recall', f'{average}_f1_score', 'top1', 'top5'):
        if key in timms and (key.startswith(average) or with_real):  # counts of hits: equal to the last bit
            assert ours[key] == pytest.approx(timms[key], rel=1e-13, abs=1e-12), key
