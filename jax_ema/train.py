"""Training library and CLI: `python -m jax_ema.train [DATA] --model resnet50 --model-ema ...`.

Pure functions in the style of flax's examples/imagenet:
  create_train_state  -> TrainState(params, batch_stats, opt_state, ema_params, ema_batch_stats, step)
  train_step          -> one jitted, donated update: loss, grads, optimizer, then the EMA
  eval_step           -> metric sums for any (params, batch_stats): raw and EMA weights alike
  train_and_evaluate  -> the whole run, what the CLI and the notebooks call
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jax_ema import (checkpoint, data_fingerprint, ema, ema_members, faults, from_config, loop, offload, optim,
                     parallel, precision, reporting)
from jax_ema import run_dir as run_dir_lib
from jax_ema.cli import run_cli
from jax_ema.config import Config, parse_args
from jax_ema.errors import UserError
from jax_ema.guard import Preemption
from jax_ema.models import create_model

log = logging.getLogger('jax_ema.train')


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
    return _strong(with_ema(state, ema_cfg))


def _strong(tree):
    """Own device copies without weak types: donating them never deletes the caller's arrays, and
    the first step does not compile a second time."""
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype, copy=True), tree)


def with_ema(state: TrainState, ema_cfg: ema.EmaConfig | None) -> TrainState:
    """Start the EMA from the current weights (timm's behaviour for checkpoints saved without EMA)."""
    if ema_cfg is None:
        return state.replace(ema_params=None, ema_batch_stats=None)
    return state.replace(ema_params=ema.init(state.params, ema_cfg.members),
                         ema_batch_stats=ema.init(state.batch_stats, ema_cfg.members))


def restore_state(step_dir, state: TrainState, restore_opt: bool = True) -> TrainState:
    """`state` with the weights, optimizer state, step and EMA of a checkpoint of the same model.

    A checkpoint saved without EMA restored into a run with EMA starts the EMA from its raw weights,
    as timm does; a checkpoint with EMA restored into a run without drops it. With `restore_opt=False`
    (timm's --no-resume-opt) the optimizer state is fresh and its schedule continues from the step.
    The float16 loss scale is restored with the optimizer state (timm resumes its GradScaler likewise).
    """
    metadata = checkpoint.read_metadata(step_dir)
    saved_ema, saved_members = metadata.get('ema') is not None, ema_members.saved_members(metadata)
    members = 1 if state.ema_params is None else state.ema_params.members
    if state.ema_params is not None:
        ema_members.check_members(step_dir, metadata, members)
    if restore_opt:
        target = checkpoint.state_tree(state.replace(ema_params=None, ema_batch_stats=None))
        if saved_ema and saved_members > 1:  # a stack: float leaves with a leading member axis
            target.update(ema_params=ema_members.stacked_target(target['params'], saved_members),
                          ema_batch_stats=ema_members.stacked_target(target['batch_stats'], saved_members))
        elif saved_ema:
            target.update(ema_params=target['params'], ema_batch_stats=target['batch_stats'])
        target.pop('loss_scale', None)
        if metadata.get('loss_scale'):  # float16 --amp's GradScaler state, restored with the optimizer's
            target['loss_scale'] = dict(scale=np.float32(0), growth_tracker=np.int32(0))
        tree = checkpoint.restore_tree(step_dir, target)
        opt_state = tree['opt_state']
        if state.loss_scale is not None and 'loss_scale' in tree:
            state = state.replace(loss_scale=state.loss_scale.replace(
                scale=jnp.asarray(tree['loss_scale']['scale'], jnp.float32),
                growth_tracker=jnp.asarray(tree['loss_scale']['growth_tracker'], jnp.int32)))
    else:  # any optimizer's state: read without a target, keep only what does not depend on it
        tree = checkpoint.restore_tree(step_dir)
        opt_state = optim.at_step(state.opt_state, tree['step'])
    restored = state.replace(step=tree['step'], params=tree['params'], batch_stats=tree['batch_stats'],
                             opt_state=opt_state)
    if state.ema_params is None:
        return _strong(restored.replace(ema_params=None, ema_batch_stats=None))
    if saved_ema and members > 1:
        return _strong(restored.replace(ema_params=ema.init_stacked(tree['ema_params']),
                                        ema_batch_stats=ema.init_stacked(tree['ema_batch_stats'])))
    source = tree if saved_ema else {'ema_params': tree['params'], 'ema_batch_stats': tree['batch_stats']}
    return _strong(restored.replace(ema_params=ema.init(source['ema_params'], members),
                                    ema_batch_stats=ema.init(source['ema_batch_stats'], members)))


def train_step(state: TrainState, batch: dict, ema_cfg: ema.EmaConfig | None, smoothing: float,
               accum_steps: int = 1, seed: int = 0):
    """Forward (BatchNorm in train mode), loss, gradients, optimizer update, then the EMA update.

    With `accum_steps` > 1 the batch is split into that many micro-batches whose gradients are
    averaged (timm's --grad-accum-steps; each forward updates the BatchNorm statistics, as in torch)
    before the one optimizer update and the one EMA update. The EMA step is the optimizer update count
    after this update, as timm's `num_updates`. A state without EMA (off, or held elsewhere) skips it.
    A state with a `loss_scale` (float16 --amp) scales the loss, and skips the update and the EMA
    update when the gradients are not finite (precision.skip_if_not_finite).
    Dropout / drop path draw from `seed` folded with the update count (and the micro-batch index).
    """
    scaler = state.loss_scale
    dropout_key = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)

    def loss_fn(params, batch_stats, micro, key=dropout_key):
        logits, updates = state.apply_fn({'params': params, 'batch_stats': batch_stats},
                                         micro['image'], train=True, mutable=['batch_stats'],
                                         rngs={'dropout': key})
        loss = optim.cross_entropy(logits, micro['label'], smoothing)
        return (loss if scaler is None else scaler.scale_loss(loss)), updates['batch_stats']

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, batch_stats), grads = grad_fn(state.params, state.batch_stats, batch)
    else:
        micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)
        micro['index'] = jnp.arange(accum_steps)

        def accumulate(carry, micro_batch):
            stats, grad_sum, loss_sum = carry
            (loss, stats), grads = grad_fn(state.params, stats, micro_batch,
                                           jax.random.fold_in(dropout_key, micro_batch['index']))
            return (stats, jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (batch_stats, grad_sum, loss_sum), _ = jax.lax.scan(
            accumulate, (state.batch_stats, zeros, jnp.zeros((), jnp.float32)), micro)
        grads = jax.tree.map(lambda g: g / accum_steps, grad_sum)
        loss = loss_sum / accum_steps
    before = state
    if scaler is not None:
        loss, grads, finite = scaler.unscale(loss, grads)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_cfg is not None and state.ema_params is not None:
        ema_params, ema_stats = ema.update(ema_cfg, state.ema_params, state.ema_batch_stats,
                                           state.params, state.batch_stats, state.step)
        state = state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)
    if scaler is not None:
        state = precision.skip_if_not_finite(finite, state, before)
    return state, {'loss': loss}


def eval_step(params, batch_stats, batch, *, apply_fn):
    """Sums over the real (mask=True) rows: cross-entropy loss, top-1 and top-5 hits, count."""
    params, batch_stats = ema.tree(params), ema.tree(batch_stats)  # the EMA is held flat
    logits = apply_fn({'params': params, 'batch_stats': batch_stats}, batch['image'], train=False)
    logits = logits.astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    labels = batch['label']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    hit5 = jnp.any(topk == labels[:, None], axis=-1)
    hit1 = topk[:, 0] == labels
    return {'loss': jnp.sum(loss * mask), 'top1': jnp.sum(hit1 * mask), 'top5': jnp.sum(hit5 * mask),
            'count': jnp.sum(mask)}


def evaluate(p_eval, params, batch_stats, dataset, batch_size: int) -> dict:
    """Top-1/top-5 in percent and mean loss over the whole split."""
    totals = None
    for batch in dataset.eval_batches(batch_size, jax.process_index(), jax.process_count()):
        sums = p_eval(params, batch_stats, parallel.shard_batch(batch))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = max(float(totals['count']), 1.0)
    return {'loss': float(totals['loss']) / count, 'top1': 100.0 * float(totals['top1']) / count,
            'top5': 100.0 * float(totals['top5']) / count}


def _resume(config: Config, state: TrainState, num_classes: int):
    """(state, step folder) from `--resume`; checks the checkpoint is of this model, classes and optimizer."""
    step_dir = checkpoint.resolve(config.resume)
    meta = checkpoint.read_metadata(step_dir)
    if (meta.get('model'), meta.get('num_classes')) != (config.model, num_classes):
        raise UserError(f'--resume {config.resume!r} holds {meta.get("model")} with {meta.get("num_classes")} '
                        f'classes, but this run is {config.model} with {num_classes}; resume with the same '
                        '--model and data')
    if meta.get('opt', config.opt) != config.opt and not config.no_resume_opt:
        raise UserError(f'--resume {config.resume!r} was trained with --opt {meta["opt"]}, this run asks for '
                        f'--opt {config.opt}; use the same --opt, or add --no-resume-opt to start it afresh')
    restored = restore_state(step_dir, state, restore_opt=not config.no_resume_opt)
    log.info('Resumed from %s (update %d)', step_dir, int(restored.step))
    return restored, step_dir


def train_and_evaluate(config: Config, run_dir=None) -> dict:
    """Train and validate raw and EMA weights every epoch; returns the results dict (also results.json)."""
    with contextlib.ExitStack() as cleanup:  # issue 13: the run lock, checkpoints and TensorBoard closed on any exit
        return _train_and_evaluate(config, run_dir, cleanup)


def _train_and_evaluate(config: Config, run_dir, cleanup: contextlib.ExitStack) -> dict:
    config = config.resolved()
    where = offload.placement(config.model_ema_force_cpu, config.model_ema_shard)  # of the EMA
    parallel.initialize(config.coordinator_address, config.num_processes, config.process_id, config.distributed)
    model_kwargs = from_config.model_kwargs(config)
    create_model(config.model, 1, **model_kwargs)  # an unknown model name fails before the data is read
    compute_dtype, param_dtype, loss_scaling = precision.resolve(config.amp, config.amp_dtype, config.model_dtype)
    train_ds, val_ds = from_config.load_data(config)
    num_classes = train_ds.num_classes
    model = create_model(config.model, num_classes, dtype=compute_dtype, param_dtype=param_dtype,
                         **model_kwargs)
    batch_size = config.batch_size * jax.device_count() * config.grad_accum_steps  # rows per update
    updates_per_epoch = train_ds.steps_per_epoch(batch_size)
    lr, schedule, num_epochs, tx = from_config.create_optimizer_and_schedule(config, updates_per_epoch,
                                                                             batch_size)
    if config.initial_checkpoint:  # the EMA then starts from these weights, as in timm
        from jax_ema import timm_io
        variables = timm_io.load_initial_variables(config.initial_checkpoint, config.model, num_classes,
                                                   use_ema=config.initial_checkpoint_ema)
        variables = precision.cast_params(variables, param_dtype)  # timm files are read as float32
    else:  # jitted: one compile instead of one per parameter shape (eager init of a MobileNet compiles hundreds)
        variables = jax.jit(functools.partial(model.init, train=False))(
            jax.random.PRNGKey(config.seed), jnp.zeros((1, config.img_size, config.img_size, 3)))
    from_config.check_trainable(model, variables, batch_size // config.grad_accum_steps, config.img_size)
    if param_dtype != jnp.float32:
        tx = precision.fp32_optimizer(tx)
    ema_cfg = from_config.ema_config(config)
    state = create_train_state(model, tx, variables, ema_cfg)
    if loss_scaling:
        state = state.replace(loss_scale=precision.LossScale.create())
    # --- issue 13 (reliability): the resume's position, realigned when the data or the global batch changed;
    # the run folder (a new one, or the resumed run's when it goes on there) and its lock, taken before any write.
    data_fp = data_fingerprint.of_datasets(train_ds, val_ds)
    resumed_from, resumed_meta, carried_loss = None, None, None
    if config.resume:
        state, resumed_from = _resume(config, state, num_classes)
        resumed_meta = checkpoint.read_metadata(resumed_from)
        state, carried_loss = _resume_position(state, resumed_meta, data_fp, batch_size, updates_per_epoch,
                                               resumed_from)
    if parallel.is_main():
        run_dir, lock = run_dir_lib.claim(run_dir, config.output, config.experiment, config.model, config.img_size,
                                          resumed_from)
        cleanup.enter_context(lock)
    run_dir = Path(parallel.broadcast_path(run_dir))  # process 0's
    continuing = resumed_from is not None and run_dir_lib.goes_on(run_dir, resumed_from)
    # --- end issue 13
    ema_vars = (state.ema_params, state.ema_batch_stats)
    state = parallel.replicate(state.replace(ema_params=None, ema_batch_stats=None))
    if ema_cfg is not None:
        state = state.replace(ema_params=offload.place(ema_vars[0], where),
                              ema_batch_stats=offload.place(ema_vars[1], where))
    host_ema = ema_cfg is not None and where == 'host'
    from_config.warn_horizon(ema_cfg, num_epochs * updates_per_epoch)

    log.info('Run folder: %s', run_dir)
    start = int(jax.device_get(state.step))
    # --- issue 13: args.yaml as started (args-resume-<n>.yaml beside it); the records = the checkpoint's rows
    reporting.write_args(run_dir, config)
    manager = checkpoint.open_manager(run_dir / 'checkpoints', config.checkpoint_hist)
    cleanup.callback(manager.close)
    rows = reporting.rows_at_checkpoint(run_dir, resumed_meta, start // updates_per_epoch) if continuing else []
    if continuing:
        reporting.rewrite_records(run_dir, rows, reporting.results_of(rows, config, ema_cfg),
                                  ema.member_names(ema_cfg) if ema_cfg else None)
    board = reporting.TensorBoard(run_dir, purge_step=(int(rows[-1]['epoch']) + 1 if rows else 0) if continuing
                                  else None)
    cleanup.callback(board.close)
    records = dict(data=data_fp, global_batch_size=batch_size, updates_per_epoch=updates_per_epoch)
    # --- end issue 13
    log.info('Model %s (%d classes), %d train / %d validation images, %d updates per epoch, lr %g, EMA %s',
             config.model, num_classes, train_ds.num_examples, val_ds.num_examples, updates_per_epoch, lr,
             'off' if ema_cfg is None else ', '.join(ema.member_names(ema_cfg)) + {'device': '', 'host': ' on host',
                                                                                   'sharded': ' sharded'}[where])

    fused = ema_cfg is not None and not host_ema and ema_cfg.update_every == 1  # EMA inside the step
    step_fn = functools.partial(train_step, ema_cfg=ema_cfg if fused and where == 'device' else None,
                                smoothing=config.smoothing, accum_steps=config.grad_accum_steps, seed=config.seed)
    if fused and where == 'sharded':
        step_fn = offload.fuse_sharded(step_fn, ema_cfg)
    p_train = jax.jit(step_fn, donate_argnums=0)
    step = loop.Stepper(p_train, None if fused or ema_cfg is None else offload.ema_update(ema_cfg, where),
                        every=ema_cfg.update_every if ema_cfg else 1, last=start)
    p_eval = jax.jit(functools.partial(eval_step, apply_fn=model.apply))
    eval_bs = (config.validation_batch_size or config.batch_size) * jax.device_count()
    preemption = Preemption()

    def epoch_loss(epoch, mean, done):
        """{'sum', 'count'} of the epoch's train losses after `done` of its updates (with those before a resume)."""
        first = start - epoch * updates_per_epoch if epoch == start // updates_per_epoch else 0
        base = carried_loss if carried_loss and epoch == start // updates_per_epoch else {'sum': 0.0, 'count': 0}
        return {'sum': base['sum'] + mean * (done - first), 'count': base['count'] + done - first}

    def after_update(state, count, check_finite):
        epoch, position = divmod(count - 1, updates_per_epoch)  # issue 13: an epoch's last update is its own
        position += 1
        if ema_cfg is not None and ema_members.snapshot_due(count, config.model_ema_snapshot_every,
                                                            num_epochs * updates_per_epoch):
            state = step.flush(state, count)
            ema_members.save_snapshot(run_dir, count, ema_cfg, state, config.snapshot_dtype)
        stop = preemption.agreed()
        if stop or (config.recovery_interval and count % config.recovery_interval == 0
                    and position != updates_per_epoch):
            mean = check_finite()
            state = step.flush(state, count)
            meta = from_config.checkpoint_metadata(config, num_classes, ema_cfg, epoch, position)
            meta.update(records, summary=rows, train_loss_partial=epoch_loss(epoch, mean, position))
            checkpoint.save(manager, state, meta)
        if stop and parallel.is_main():
            print(f'Stopped by {preemption.signal_name or "a signal"} at update {count}; saved a checkpoint. '
                  f'Resume with: python -m jax_ema.train ... --resume {run_dir}', flush=True)
        return state, stop

    def finish_epoch(state, epoch, train_loss, saved=None):
        """Validate raw and EMA weights, then save the checkpoint (or give `saved`, an existing one of this state,
        its validation), then the records: the checkpoint first, so a kill never leaves a row it lacks."""
        faults.hit('epoch-end:before-validate', (epoch + 1) * updates_per_epoch)
        raw = evaluate(p_eval, state.params, state.batch_stats, val_ds, eval_bs)
        log.info('Test: Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f', raw['loss'], raw['top1'], raw['top5'])
        ema_metrics, member_metrics, best_member = None, [], 0
        if state.ema_params is not None and ema_cfg.members > 1:
            stack = (state.ema_params, state.ema_batch_stats)
            member_metrics = ema_members.evaluate_members(
                lambda p, s: evaluate(p_eval, p, s, val_ds, eval_bs),
                *(offload.to_device(stack) if where == 'sharded' else stack), host_ema, ema.member_names(ema_cfg))
            ema_metrics = member_metrics[0]
            best_member = ema_members.best_index(member_metrics, lambda m: reporting.score(m, config.eval_metric))
        elif state.ema_params is not None:
            ema_vars = (state.ema_params, state.ema_batch_stats)
            ema_metrics = evaluate(p_eval, *(offload.to_device(ema_vars) if where != 'device' else ema_vars),
                                   val_ds, eval_bs)
            log.info('Test (EMA): Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f',
                     ema_metrics['loss'], ema_metrics['top1'], ema_metrics['top5'])
        epoch_lr = float(schedule((epoch + 1) * updates_per_epoch - 1))  # timm: lr at the epoch's end
        row = reporting.summary_row(epoch, train_loss, epoch_lr, raw, ema_metrics, member_metrics[1:])
        meta = from_config.checkpoint_metadata(config, num_classes, ema_cfg, epoch, updates_per_epoch,
                                               {'raw': raw, 'ema': ema_metrics})
        if member_metrics:
            meta.update(best_ema_index=best_member, metrics=dict(meta['metrics'], ema_members=member_metrics))
        meta.update(records, summary=rows + [row])
        score = reporting.score((member_metrics or [ema_metrics or raw])[best_member], config.eval_metric)
        if saved is None:
            checkpoint.save(manager, state, meta, score)
        else:
            checkpoint.record_validation(manager, saved, meta, score)
        rows.append(row)
        reporting.write_summary(run_dir, rows)
        faults.hit('save:after-summary', (epoch + 1) * updates_per_epoch)
        board.scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
        reporting.plot_metrics(run_dir, rows, member_names=ema.member_names(ema_cfg) if ema_cfg else None)
        reporting.write_results(run_dir, reporting.results_of(rows, config, ema_cfg))

    if resumed_meta is not None and resumed_meta.get('metrics') is None \
            and resumed_meta.get('position') == resumed_meta.get('updates_per_epoch'):  # issue 13
        # stopped on an epoch's last update, before validating it: validate it now (its row, its best decision)
        loss = resumed_meta['train_loss_partial']
        finish_epoch(state, int(resumed_meta['epoch']), loss['sum'] / max(loss['count'], 1),
                     saved=resumed_from if continuing else None)
    with preemption:
        for epoch in range(start // updates_per_epoch, num_epochs):
            first = start - epoch * updates_per_epoch if epoch == start // updates_per_epoch else 0
            state, train_loss, stopped = loop.train_epoch(
                step, state, map(parallel.shard_batch, train_ds.train_batches(
                    batch_size, epoch, start_step=first, process_index=jax.process_index(),
                    process_count=jax.process_count())), epoch=epoch,
                num_epochs=num_epochs, updates_per_epoch=updates_per_epoch, first_update=first,
                schedule=schedule, log_interval=config.log_interval, after_update=after_update)
            if stopped:
                return {'preempted': True, 'run_dir': str(run_dir), 'step': int(jax.device_get(state.step))}
            if first and carried_loss:  # issue 13: the epoch began before the resume; its loss covers all of it
                total = epoch_loss(epoch, train_loss, updates_per_epoch)
                train_loss = total['sum'] / total['count']
            state = step.flush(state, (epoch + 1) * updates_per_epoch)
            finish_epoch(state, epoch, train_loss)
    results = reporting.results_of(rows, config, ema_cfg)
    if results is None:
        log.info('Nothing left to train: the checkpoint is at update %d of %d', start, num_epochs * updates_per_epoch)
        return {'run_dir': str(run_dir), 'best_metric': None}
    log.info('*** Best metric: %s (epoch %d)', results['best_metric'], results['best_epoch'])
    reporting.write_results(run_dir, results)
    return dict(results, run_dir=str(run_dir))


def _resume_position(state: TrainState, meta: dict, data_fp: dict, batch_size: int, updates_per_epoch: int,
                     step_dir):
    """(state, the resumed epoch's train loss so far) for a resume from `meta`'s checkpoint (issue 13).

    When the training data or the global batch differ from the checkpoint's, the epochs are sliced anew: the
    run goes on from the start of the next epoch under the new updates-per-epoch, with the update count (the
    lr schedule's count and the EMA step) set there, and one warning line saying what changed.
    """
    changed = data_fingerprint.changes(meta.get('data'), data_fp, 'train')
    changed = [f'the training data ({", ".join(changed)})'] if changed else []
    if meta.get('global_batch_size') not in (None, batch_size):
        changed.append(f'the global batch ({meta["global_batch_size"]} -> {batch_size})')
    if not changed:
        val_changed = data_fingerprint.changes(meta.get('data'), data_fp, 'validation')
        if val_changed:
            log.warning('The validation data (%s) changed since %s; the summary rows before this resume were '
                        'measured on the old one', ', '.join(val_changed), step_dir)
        position = int(jax.device_get(state.step)) % updates_per_epoch
        return state, meta.get('train_loss_partial') if position else None
    epoch, start = data_fingerprint.next_epoch_start(meta, updates_per_epoch)
    what = ' and '.join(changed)
    log.warning('%s changed since %s; going on from the start of epoch %d: update %d, at %d updates per epoch '
                '(the lr schedule and the EMA step set there too)', what[0].upper() + what[1:], step_dir, epoch,
                start, updates_per_epoch)
    step = jnp.asarray(start, jnp.asarray(state.step).dtype)
    return state.replace(step=step, opt_state=optim.at_step(state.opt_state, start)), None


def main(argv=None) -> int:
    """CLI entry: parse timm-style flags, train, print `--result` and the results JSON as timm does."""
    def run():
        config = parse_args(argv)
        results = train_and_evaluate(config)
        if results.get('preempted') or not parallel.is_main():
            return 0
        print('--result')
        print(json.dumps({k: v for k, v in results.items() if k != 'run_dir'}, indent=4))
        return 0
    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
