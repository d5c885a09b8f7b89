"""The PyTorch reference: timm's own model, optimizer, loss, scheduler and ModelEmaV3, stepped as
timm's train.py steps them (no AMP, one process, no gradient accumulation; mixup, loss and clipping as the
caller gives them).

Per update, as in train.py's `train_one_epoch`:
    loss = loss_fn(model(x), y); loss.backward(); optimizer.step()
    num_updates += 1; optimizer.zero_grad(); model_ema.update(model, step=num_updates)
    lr_scheduler.step_update(num_updates=num_updates)
and at each epoch end `lr_scheduler.step(epoch + 1)`. It runs on torch's GPU when there is one
(`precision.torch_device`); the parity tests pin its float32 precision (torch_ref/precision.py).
"""

from __future__ import annotations

import math

import numpy as np
import timm
import timm.optim
import timm.scheduler
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.utils import ModelEmaV3, dispatch_clip_grad

from torch_ref.precision import torch_device

DTYPES = {'float32': torch.float32, 'float64': torch.float64}


def to_numpy(state_dict) -> dict[str, np.ndarray]:
    """A torch state_dict as a dict of numpy copies."""
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def create_model(model_name: str, num_classes: int, *, state_dict=None, dtype='float32', seed=0):
    """timm's model (pretrained=False) in `dtype`, with `state_dict` (numpy) loaded if given."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, num_classes=num_classes, pretrained=False)
    model.to(DTYPES[dtype])
    if state_dict is not None:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    return model


def run_reference(
    model_name,
    num_classes,
    batches,
    *,
    state_dict=None,
    dtype='float32',
    seed=0,
    opt='sgd',
    lr=0.1,
    weight_decay=1e-4,
    momentum=0.9,
    opt_kwargs=None,
    sched='cosine',
    epochs=1,
    updates_per_epoch=None,
    warmup_epochs=0,
    warmup_lr=1e-5,
    min_lr=0.0,
    sched_on_updates=True,
    sched_kwargs=None,
    smoothing=0.1,
    model_ema=True,
    ema_decay=0.9998,
    ema_warmup=False,
    ema_kwargs=None,
    device=None,
    loss_fn=None,
    mixup_fn=None,
    clip_grad=None,
    clip_mode='norm',
) -> dict:
    """Train timm's `model_name` on `batches` = [(images NHWC, int labels), ...], one update each.

    The schedule spans `epochs` x `updates_per_epoch` updates (default: the batches split evenly
    over `epochs`); the run may stop early but not run past it. `device`: torch's (default: the GPU when
    there is one; ModelEmaV3 follows the model unless `ema_kwargs` names a device). As train.py with
    --no-prefetcher: `mixup_fn(x, y, step)` -> (x, soft targets) (timm's Mixup) before the forward, `loss_fn`
    (default: label smoothing CE, or CE without smoothing), `clip_grad` / `clip_mode` through timm's
    dispatch_clip_grad on the model's parameters (agc: all but the head's two). Returns {'losses': [float per step],
    'lrs': [lr used by each step], 'state_dict': numpy dict, 'ema_state_dict': numpy dict or None}.
    """
    if updates_per_epoch is None:
        updates_per_epoch = math.ceil(len(batches) / epochs)
    if len(batches) > epochs * updates_per_epoch:
        raise ValueError(f'{len(batches)} batches exceed the schedule of {epochs} x {updates_per_epoch} updates')
    torch_dtype = DTYPES[dtype]
    device = torch_device() if device is None else torch.device(device)
    model = create_model(model_name, num_classes, state_dict=state_dict, dtype=dtype, seed=seed).to(device)

    optimizer = timm.optim.create_optimizer_v2(
        model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **(opt_kwargs or {})
    )
    if loss_fn is None:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing else torch.nn.CrossEntropyLoss()
    lr_scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        step_on_epochs=not sched_on_updates,
        updates_per_epoch=updates_per_epoch,
        **(sched_kwargs or {}),
    )
    ema = None
    if model_ema:
        ema = ModelEmaV3(model, decay=ema_decay, use_warmup=ema_warmup, **(ema_kwargs or {}))

    model.train()
    losses, lrs = [], []
    num_updates = 0
    for images, labels in batches:
        x = torch.from_numpy(np.asarray(images)).to(device).permute(0, 3, 1, 2).to(torch_dtype).contiguous()
        y = torch.from_numpy(np.asarray(labels)).to(device).long()
        groups = optimizer.param_groups
        lrs.append(sum(g['lr'] for g in groups) / len(groups))
        if mixup_fn is not None:
            x, y = mixup_fn(x, y, num_updates)

        loss = loss_fn(model(x), y)
        loss.backward()
        if clip_grad is not None:
            parameters = list(model.parameters())
            dispatch_clip_grad(parameters[:-2] if clip_mode == 'agc' else parameters, value=clip_grad, mode=clip_mode)
        optimizer.step()
        losses.append(loss.item())

        num_updates += 1
        optimizer.zero_grad()
        if ema is not None:
            ema.update(model, step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
            if num_updates % updates_per_epoch == 0:
                lr_scheduler.step(num_updates // updates_per_epoch)  # train.py: step(epoch + 1)

    return {
        'losses': losses,
        'lrs': lrs,
        'state_dict': to_numpy(model.state_dict()),
        'ema_state_dict': to_numpy(ema.module.state_dict()) if ema is not None else None,
    }
