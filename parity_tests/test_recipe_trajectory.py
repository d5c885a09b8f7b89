"""A float64 training trajectory with mixup + CutMix (per row), BCE on the soft targets and gradient-norm
clipping: our jitted train_step against timm's loop (torch_ref.run_reference with timm's Mixup fed the same
draws, timm's BinaryCrossEntropy and dispatch_clip_grad), as test_trajectory.py compares them."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.loss import BinaryCrossEntropy

from jax_ema import clip_grad, ema, losses, mixup, optim
from jax_ema.convert import to_flax, to_timm
from jax_ema.models import create_model
from jax_ema.step import create_train_state, train_step
from parity_tests import test_trajectory as traj
from parity_tests.test_recipe_parity import timm_mixup_with

pytestmark = [pytest.mark.slow, pytest.mark.float64]
SEED = 3
CASE = dataclasses.replace(traj.CASES['sgd_f64'], steps=8, epochs=1, updates_per_epoch=8)
MIX = mixup.MixupConfig(
    mixup_alpha=0.4, cutmix_alpha=1.0, mode='elem', label_smoothing=0.1, rows=traj.BATCH, num_classes=traj.NUM_CLASSES
)
LOSS = losses.LossConfig('bce', pos_weight=2.0)
CLIP = clip_grad.ClipConfig(0.05, 'norm')


def raw_draws(update: int) -> mixup.Raw:
    """The random numbers of update `update`'s mixing, as our step draws them (one loader batch: chunk 0)."""
    key = jax.random.fold_in(mixup.update_key(SEED, update), 0)
    return mixup.random_draws(MIX, key, mixup.draw_count(MIX, traj.BATCH), traj.IMG, traj.IMG)


def run_ours(state_dict, batches):
    with jax.enable_x64(True):
        model = create_model(CASE.model, traj.NUM_CLASSES, dtype=jnp.float64)
        schedule, _ = optim.create_lr_schedule(
            'cosine', CASE.lr, CASE.epochs, CASE.updates_per_epoch, CASE.warmup_epochs, CASE.warmup_lr, CASE.min_lr,
            sched_on_updates=True,
        )  # fmt: skip
        tx = optim.create_optimizer(CASE.opt, schedule, CASE.weight_decay, CASE.momentum)
        ema_cfg = ema.EmaConfig(decay=CASE.ema_decay)
        state = create_train_state(model, tx, to_flax(CASE.model, state_dict), ema_cfg)
        step = jax.jit(
            functools.partial(
                train_step, ema_cfg=ema_cfg, smoothing=0.1, seed=SEED, mixup=MIX, train_loss=LOSS, clip=CLIP
            ),
            donate_argnums=0,
        )
        losses_ = []
        for images, labels in batches:
            state, metrics = step(state, {'image': images, 'label': labels.astype(np.int32)})
            losses_.append(float(metrics['loss']))
        return {
            'losses': losses_,
            'lrs': [float(schedule(u)) for u in range(len(batches))],
            'state_dict': to_timm(CASE.model, {'params': state.params, 'batch_stats': state.batch_stats}),
            'ema_state_dict': to_timm(
                CASE.model, {'params': ema.tree(state.ema_params), 'batch_stats': ema.tree(state.ema_batch_stats)}
            ),
        }


def timm_mixup(x, y, update):
    """timm's Mixup on the torch batch with our draws of update `update`."""
    with jax.enable_x64(True):
        raw = raw_draws(update)
    mixed, target = timm_mixup_with(MIX, raw, x.cpu().numpy().transpose(0, 2, 3, 1), y.cpu().numpy())
    return torch.from_numpy(np.ascontiguousarray(mixed.transpose(0, 3, 1, 2))).to(x.device), torch.from_numpy(
        target
    ).to(x.device)


def first_grad_norm(state_dict, batch) -> float:
    """timm's global gradient norm at the first update (before clipping)."""
    model = traj.trainer.create_model(CASE.model, traj.NUM_CLASSES, state_dict=state_dict, dtype='float64')
    x = torch.from_numpy(batch[0]).permute(0, 3, 1, 2).contiguous()
    x, y = timm_mixup(x, torch.from_numpy(batch[1]), 0)
    BinaryCrossEntropy(pos_weight=2.0)(model(x), y).backward()
    return float(torch.sqrt(sum(torch.sum(p.grad**2) for p in model.parameters())))


def test_mixup_bce_clip_trajectory_matches_timm():
    state_dict = traj.cast(traj.timm_init(CASE.model), 'float64')
    batches = traj.make_batches(CASE.steps, 'float64')
    ours = run_ours(state_dict, batches)
    with traj.one_torch_thread():
        theirs = traj.run_reference(
            CASE.model, traj.NUM_CLASSES, batches, state_dict=state_dict, dtype='float64', opt=CASE.opt, lr=CASE.lr,
            weight_decay=CASE.weight_decay, momentum=CASE.momentum, epochs=CASE.epochs,
            updates_per_epoch=CASE.updates_per_epoch, warmup_epochs=CASE.warmup_epochs, warmup_lr=CASE.warmup_lr,
            min_lr=CASE.min_lr, sched_on_updates=True, model_ema=True, ema_decay=CASE.ema_decay,
            loss_fn=BinaryCrossEntropy(pos_weight=2.0), mixup_fn=timm_mixup, clip_grad=CLIP.value, clip_mode=CLIP.mode,
        )  # fmt: skip
    errors = traj.compare(CASE, ours, theirs)
    for quantity, (err, where) in errors.items():
        bound = traj.BOUNDS['float64'][quantity]
        assert err <= bound, f'{quantity}: error {err:.3g} at {where} exceeds {bound:g}'
    assert first_grad_norm(state_dict, batches[0]) > 2 * CLIP.value  # the clipping acts
    mixed_draws = [raw_draws(u) for u in range(CASE.steps)]
    assert any(bool(np.any(np.asarray(mixup.params(MIX, r)[1]))) for r in mixed_draws)  # some rows were cut
    assert len(set(np.round(theirs['losses'], 12))) == CASE.steps
