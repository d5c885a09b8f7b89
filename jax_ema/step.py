"""The TrainState and the pure functions on it, in the style of flax's examples/imagenet.

create_train_state  -> TrainState(params, batch_stats, opt_state, ema_params, ema_batch_stats, step)
restore_state       -> a TrainState from a checkpoint (weights, optimizer, EMA, step)
train_step          -> one update: loss, grads, optimizer, then the EMA (jitted and donated by the caller)
eval_step           -> metric sums for any (params, batch_stats): raw and EMA weights alike
evaluate            -> top-1 / top-5 / loss over a dataset split
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jax_ema import (
    checkpoint,
    clip_grad,
    device_input,
    ema,
    losses,
    mixup as mixup_lib,
    optim,
    parallel,
    precision,
    timm_log,
)


class TrainState(train_state.TrainState):
    """flax TrainState + BatchNorm statistics + the EMA of both (None when EMA is off: no copy kept)
    + the dynamic loss scale of float16 --amp (precision.LossScale; None otherwise)."""

    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None
    loss_scale: Any = None


def create_train_state(model, tx, variables, ema_cfg: ema.EmaConfig | None) -> TrainState:
    """A TrainState from initial variables; the EMA starts as a real float32 copy of them."""
    params, stats = variables['params'], variables.get('batch_stats', {})
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=stats)
    return own_copies(with_ema(state, ema_cfg))


def own_copies(tree):
    """Own device copies without weak types: donating them never deletes the caller's arrays, and
    the first step does not compile a second time."""
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype, copy=True), tree)


def with_ema(state: TrainState, ema_cfg: ema.EmaConfig | None) -> TrainState:
    """Start the EMA from the current weights (timm's behaviour for checkpoints saved without EMA)."""
    if ema_cfg is None:
        return state.replace(ema_params=None, ema_batch_stats=None)
    return state.replace(
        ema_params=ema.init(state.params, ema_cfg.members), ema_batch_stats=ema.init(state.batch_stats, ema_cfg.members)
    )


def restore_state(step_dir, state: TrainState, restore_opt: bool = True) -> TrainState:
    """`state` with the weights, optimizer state, step and EMA of a checkpoint of the same model.

    A checkpoint saved without EMA restored into a run with EMA starts the EMA from its raw weights,
    as timm does; a checkpoint with EMA restored into a run without drops it. With `restore_opt=False`
    (timm's --no-resume-opt) the optimizer state is fresh and its schedule continues from the step.
    The float16 loss scale is restored with the optimizer state (timm resumes its GradScaler likewise).
    """
    metadata = checkpoint.read_metadata(step_dir)
    saved_ema, saved_members = metadata.get('ema') is not None, checkpoint.saved_members(metadata)
    members = 1 if state.ema_params is None else state.ema_params.members
    if state.ema_params is not None:
        checkpoint.check_members(step_dir, metadata, members)
    if restore_opt:
        target = checkpoint.state_tree(state.replace(ema_params=None, ema_batch_stats=None))
        if saved_ema and saved_members > 1:  # a stack: float leaves with a leading member axis
            target.update(
                ema_params=checkpoint.stacked_target(target['params'], saved_members),
                ema_batch_stats=checkpoint.stacked_target(target['batch_stats'], saved_members),
            )
        elif saved_ema:
            target.update(ema_params=target['params'], ema_batch_stats=target['batch_stats'])
        target.pop('loss_scale', None)
        if metadata.get('loss_scale'):  # float16 --amp's GradScaler state, restored with the optimizer's
            target['loss_scale'] = dict(scale=np.float32(0), growth_tracker=np.int32(0))
        tree = checkpoint.restore_tree(step_dir, target)
        opt_state = tree['opt_state']
        if state.loss_scale is not None and 'loss_scale' in tree:
            state = state.replace(
                loss_scale=state.loss_scale.replace(
                    scale=jnp.asarray(tree['loss_scale']['scale'], jnp.float32),
                    growth_tracker=jnp.asarray(tree['loss_scale']['growth_tracker'], jnp.int32),
                )
            )
    else:  # any optimizer's state: read without a target, keep only what does not depend on it
        tree = checkpoint.restore_tree(step_dir)
        opt_state = optim.at_step(state.opt_state, tree['step'])
    restored = state.replace(
        step=tree['step'], params=tree['params'], batch_stats=tree['batch_stats'], opt_state=opt_state
    )
    if state.ema_params is None:
        return own_copies(restored.replace(ema_params=None, ema_batch_stats=None))
    if saved_ema and members > 1:
        return own_copies(
            restored.replace(
                ema_params=ema.init_stacked(tree['ema_params']),
                ema_batch_stats=ema.init_stacked(tree['ema_batch_stats']),
            )
        )
    source = tree if saved_ema else {'ema_params': tree['params'], 'ema_batch_stats': tree['batch_stats']}
    return own_copies(
        restored.replace(
            ema_params=ema.init(source['ema_params'], members),
            ema_batch_stats=ema.init(source['ema_batch_stats'], members),
        )
    )


def train_step(
    state: TrainState,
    batch: dict,
    ema_cfg: ema.EmaConfig | None,
    smoothing: float,
    accum_steps: int = 1,
    seed: int = 0,
    ema_update=ema.update,
    inputs: device_input.DeviceInput | None = None,
    *,
    mixup: mixup_lib.MixupConfig | None = None,
    train_loss: losses.LossConfig | None = None,
    clip: clip_grad.ClipConfig | None = None,
    erase_first: bool = False,
):
    """Forward (BatchNorm in train mode), loss, gradients, optimizer update, then the EMA update.

    With `accum_steps` > 1 the batch is split into that many micro-batches whose gradients are
    averaged (timm's --grad-accum-steps; each forward updates the BatchNorm statistics, as in torch)
    before the one optimizer update and the one EMA update. The EMA step is the optimizer update count
    after this update, as timm's `num_updates`. Without `ema_cfg` (EMA off, or updated outside this
    step: offload.build_step) it is skipped. `ema_update` is `ema.update`, or offload.sharded_update for
    an EMA sharded over the devices (same numbers, layout pinned).
    A state with a `loss_scale` (float16 --amp) scales the loss, and skips the update and the EMA
    update when the gradients are not finite (precision.skip_if_not_finite).
    Dropout / drop path draw from `seed` folded with the update count (and the micro-batch index).
    uint8 images are normalised and randomly erased here, on the device, as `inputs` says (device_input.py),
    and mixed by `mixup` (mixup.py: soft targets; draws from `seed` and the update count; `erase_first`:
    timm's order without its prefetcher). `train_loss` is timm's training loss (losses.py; default: cross entropy
    with `smoothing`); `clip` clips the (unscaled, accumulated) gradients as timm's --clip-grad (clip_grad.py).
    """
    loss_cfg = train_loss or losses.LossConfig('ce', smoothing)
    mix, targets = None, []
    if mixup is not None:
        mix_key = mixup_lib.update_key(seed, state.step)

        def mix(images):
            images, soft = mixup_lib.apply(mixup, mix_key, state.step, images, batch['label'])
            targets.append(soft)
            return images

    images = device_input.train_images(batch['image'], inputs, state.step, mix, erase_first)  # uint8 -> model input
    batch = dict(batch, image=images, **({'target': targets[0]} if targets else {}))
    scaler = state.loss_scale
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)

    def loss_fn(params, batch_stats, micro, key=dropout_key):
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': batch_stats},
            micro['image'],
            train=True,
            mutable=['batch_stats'],
            rngs={'dropout': key},
        )
        value = losses.loss(loss_cfg, logits, micro['label'], micro.get('target'))
        return (value if scaler is None else scaler.scale_loss(value)), updates['batch_stats']

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, batch_stats), grads = grad_fn(state.params, state.batch_stats, batch)
    else:
        micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)
        micro['index'] = jnp.arange(accum_steps)

        def accumulate(carry, micro_batch):
            stats, grad_sum, loss_sum = carry
            (loss, stats), grads = grad_fn(
                state.params, stats, micro_batch, jax.random.fold_in(dropout_key, micro_batch['index'])
            )
            return (stats, jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (batch_stats, grad_sum, loss_sum), _ = jax.lax.scan(
            accumulate, (state.batch_stats, zeros, jnp.zeros((), jnp.float32)), micro
        )
        grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
        loss = loss_sum / accum_steps
    before = state
    if scaler is not None:
        loss, grads, finite = scaler.unscale(loss, grads)
    grads = clip_grad.clip(clip, grads, state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_cfg is not None and state.ema_params is not None:
        ema_params, ema_stats = ema_update(
            ema_cfg, state.ema_params, state.ema_batch_stats, state.params, state.batch_stats, state.step
        )
        state = state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)
    if scaler is not None:
        state = precision.skip_if_not_finite(finite, state, before)
    return state, {'loss': loss}


def eval_step(
    params, batch_stats, batch, *, apply_fn, inputs: device_input.DeviceInput | None = None, preds: bool = False
):
    """Sums over the real (mask=True) rows: cross-entropy loss, top-1 and top-5 hits, count (`preds`: also each
    row's top-5 class indices, 'pred', for validate_metrics)."""
    params, batch_stats = ema.tree(params), ema.tree(batch_stats)  # the EMA is held flat
    images = device_input.eval_images(batch['image'], inputs)  # uint8 -> normalised, on the device
    logits = apply_fn({'params': params, 'batch_stats': batch_stats}, images, train=False)
    logits = logits.astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    labels = batch['label']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    hit5 = jnp.any(topk == labels[:, None], axis=-1)
    hit1 = topk[:, 0] == labels
    sums = {
        'loss': jnp.sum(loss * mask),
        'top1': jnp.sum(hit1 * mask),
        'top5': jnp.sum(hit5 * mask),
        'count': jnp.sum(mask),
    }
    return dict(sums, pred=topk) if preds else sums


def evaluate(
    eval_step_fn, params, batch_stats, dataset, batch_size: int, log_name=None, log_interval: int = 0, cli=False
) -> dict:
    """Top-1/top-5 in percent and mean loss over the whole split. With `log_name` ('Test', 'Test (EMA)'),
    timm's `Test:` line every `log_interval` batches and on the last (`cli`: validate.py's form, as timm's
    validate.py, not on the last), each read at its own host sync; without, one sync at the end."""
    totals, since, pending, timer = None, None, 0, timm_log.Timer()
    last_idx = -(-dataset.num_examples // batch_size) - 1
    for i, batch in enumerate(
        device_input.prefetch(
            dataset.eval_batches(batch_size, jax.process_index(), jax.process_count()), parallel.shard_batch
        )
    ):  # the next batches go to the device meanwhile
        sums = eval_step_fn(params, batch_stats, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if not log_name:
            continue
        since, pending = (sums if since is None else jax.tree.map(jnp.add, since, sums)), pending + 1
        if i % log_interval == 0 or (i == last_idx and not cli):
            now, so_far = jax.device_get((since, totals))
            timer.tick(pending)
            rows = int(np.size(batch['label']))
            timm_log.test_line(
                log_name, i, last_idx + cli, timer, timm_log.means(now), timm_log.means(so_far), rows, cli
            )
            since, pending = None, 0
    return timm_log.means(jax.device_get(totals))
