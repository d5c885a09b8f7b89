"""--grad-checkpointing against timm's model.set_grad_checkpointing(True), in float64: one train-mode forward and
backward of timm's resnet18 with one block per stage (layers=(1,1,1,1)), its BatchNorms randomised.

Gradients: ours under remat equal timm's with checkpointing (and without) to roundoff. Running statistics:
ours equal timm's *without* checkpointing. torch's checkpoint recomputes each block's forward in train mode
during the backward pass, so timm's checkpointed blocks update their BatchNorm statistics twice per step
(num_batches_tracked 2); here the recomputation's statistics are discarded, and --grad-checkpointing changes
no number (docs/models.md)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from jax_ema.convert import to_flax, to_timm
from jax_ema.models import create_model

ARCH = dict(layers=(1, 1, 1, 1))


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.slow
@pytest.mark.float64
def test_gradients_as_timms_checkpointed_model_statistics_as_its_plain_one():
    torch.manual_seed(0)
    plain = timm.create_model('resnet18', num_classes=5, **ARCH).double().train()
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # timm zero-inits the last BN of a block: hide nothing
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    start = {k: v.numpy().copy() for k, v in plain.state_dict().items()}
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    rng = np.random.RandomState(0)
    x, w = rng.randn(4, 32, 32, 3), rng.randn(4, 5)
    for model in (plain, checkpointed):
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2))
        (logits * torch.from_numpy(w)).sum().backward()

    with jax.enable_x64(True):
        ours = create_model('resnet18', 5, dtype=jnp.float64, grad_checkpointing=True, **ARCH)
        variables = jax.tree.map(jnp.asarray, to_flax('resnet18', start, ARCH))

        def loss(params):
            logits, updates = ours.apply(
                {'params': params, 'batch_stats': variables['batch_stats']}, x, train=True, mutable=['batch_stats']
            )
            return (logits * w).sum(), updates['batch_stats']

        grads, stats = jax.grad(loss, has_aux=True)(variables['params'])
        got = to_timm('resnet18', {'params': grads, 'batch_stats': stats}, ARCH)

    for name, param in plain.named_parameters():
        assert _rel(got[name], param.grad.numpy()) <= 1e-10, name
        assert _rel(got[name], dict(checkpointed.named_parameters())[name].grad.numpy()) <= 1e-10, name
    timm_plain, timm_checkpointed = plain.state_dict(), checkpointed.state_dict()
    twice = []
    for name in [k for k in timm_plain if k.endswith(('running_mean', 'running_var'))]:
        assert _rel(got[name], timm_plain[name].numpy()) <= 1e-10, name
        if _rel(timm_checkpointed[name].numpy(), timm_plain[name].numpy()) > 1e-6:
            twice.append(name.rsplit('.', 1)[0])
    counts = {k.rsplit('.', 1)[0]: int(v) for k, v in timm_checkpointed.items() if k.endswith('num_batches_tracked')}
    assert counts['bn1'] == 1 and counts['layer1.0.bn1'] == 2  # the stem is not checkpointed, the blocks are
    assert set(twice) == {k for k, v in counts.items() if v == 2} and 'bn1' not in twice
