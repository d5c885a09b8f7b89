"""Training library and CLI: `python -m jax_ema.train [DATA] --model resnet50 --model-ema ...`.

Pure functions in the style of flax's examples/imagenet:
  create_train_state  -> TrainState(params, batch_stats, opt_state, ema_params, ema_batch_stats, step)
  train_step          -> one jitted, donated update: loss, grads, optimizer, then the EMA
  eval_step           -> metric sums for any (params, batch_stats): raw and EMA weights alike
  train_and_evaluate  -> the whole run, what the CLI and the notebooks call
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm

from jax_ema import checkpoint, ema, offload, optim, reporting
from jax_ema.cli import run_cli
from jax_ema.config import Config, parse_args
from jax_ema.models import create_model

log = logging.getLogger('jax_ema.train')


class TrainState(train_state.TrainState):
    """flax TrainState + BatchNorm statistics + the EMA of both (None when EMA is off: no copy kept)."""
    batch_stats: Any = None
    ema_params: Any = None
    ema_batch_stats: Any = None


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
    return state.replace(ema_params=ema.init(state.params), ema_batch_stats=ema.init(state.batch_stats))


def restore_state(step_dir, state: TrainState) -> TrainState:
    """`state` with the weights, optimizer state, step and EMA of a checkpoint of the same model.

    A checkpoint saved without EMA restored into a run with EMA starts the EMA from its raw weights,
    as timm does; a checkpoint with EMA restored into a run without drops it.
    """
    saved_ema = checkpoint.read_metadata(step_dir).get('ema') is not None
    target = checkpoint.state_tree(state.replace(ema_params=None, ema_batch_stats=None))
    if saved_ema:
        target.update(ema_params=target['params'], ema_batch_stats=target['batch_stats'])
    tree = checkpoint.restore_tree(step_dir, target)
    restored = state.replace(step=tree['step'], params=tree['params'], batch_stats=tree['batch_stats'],
                             opt_state=tree['opt_state'])
    if state.ema_params is None:
        return _strong(restored.replace(ema_params=None, ema_batch_stats=None))
    source = tree if saved_ema else {'ema_params': tree['params'], 'ema_batch_stats': tree['batch_stats']}
    return _strong(restored.replace(ema_params=ema.init(source['ema_params']),
                                    ema_batch_stats=ema.init(source['ema_batch_stats'])))


def train_step(state: TrainState, batch: dict, ema_cfg: ema.EmaConfig | None, smoothing: float):
    """Forward (BatchNorm in train mode), loss, gradients, optimizer update, then the EMA update.

    The EMA step is the optimizer update count after this update, as timm's `num_updates`.
    A state without EMA (EMA off, or held on the host) skips the EMA.
    """
    def loss_fn(params):
        logits, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats},
                                         batch['image'], train=True, mutable=['batch_stats'])
        return optim.cross_entropy(logits, batch['label'], smoothing), updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if ema_cfg is not None and state.ema_params is not None:
        ema_params, ema_stats = ema.update(ema_cfg, state.ema_params, state.ema_batch_stats,
                                           state.params, state.batch_stats, state.step)
        state = state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)
    return state, {'loss': loss}


def eval_step(params, batch_stats, batch, *, apply_fn):
    """Sums over the real (mask=True) rows: cross-entropy loss, top-1 and top-5 hits, count."""
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
    for batch in dataset.eval_batches(batch_size):
        sums = p_eval(params, batch_stats, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = max(float(totals['count']), 1.0)
    return {'loss': float(totals['loss']) / count, 'top1': 100.0 * float(totals['top1']) / count,
            'top5': 100.0 * float(totals['top5']) / count}


def _ema_config(config: Config) -> ema.EmaConfig | None:
    return ema.EmaConfig(decay=config.model_ema_decay, use_warmup=config.model_ema_warmup) \
        if config.model_ema else None


def _warn_horizon(ema_cfg, total_updates: int) -> None:
    if ema_cfg is not None and not ema_cfg.use_warmup and ema_cfg.horizon > total_updates:
        log.warning('The EMA horizon 1/(1-%g) = %.0f updates exceeds this run\'s %d updates: the EMA will stay '
                    'near the initial weights. Add --model-ema-warmup or use a smaller --model-ema-decay '
                    '(e.g. %.4g).', ema_cfg.decay, ema_cfg.horizon, total_updates,
                    max(0.0, 1.0 - 10.0 / max(total_updates, 1)))


def _load_data(config: Config):
    from jax_ema import data  # the only module that imports tensorflow
    cfg = data.DataConfig(data_dir=config.data, train_split=config.train_split, val_split=config.val_split,
                          val_split_fraction=config.val_split_fraction, img_size=config.img_size,
                          num_classes=config.num_classes, seed=config.seed, scale=config.scale,
                          ratio=config.ratio, hflip=config.hflip, crop_pct=config.crop_pct,
                          num_workers=config.workers)
    return data.load_datasets(cfg)


def _metadata(config: Config, num_classes: int, ema_cfg, epoch: int, metrics: dict) -> dict:
    return dict(model=config.model, num_classes=num_classes, img_size=config.img_size,
                ema=dataclasses.asdict(ema_cfg) if ema_cfg else None, host_ema=config.model_ema_force_cpu,
                epoch=epoch, position=0, metrics=metrics)


def train_and_evaluate(config: Config, run_dir=None) -> dict:
    """Train and validate raw and EMA weights every epoch; returns the results dict (also results.json)."""
    config = config.resolved()
    create_model(config.model, 1)  # an unknown model name fails before the data is read
    train_ds, val_ds = _load_data(config)
    num_classes = train_ds.num_classes
    model = create_model(config.model, num_classes)
    batch_size = config.batch_size * jax.device_count()
    updates_per_epoch = train_ds.steps_per_epoch(batch_size)
    lr = optim.resolve_lr(config.lr, config.lr_base, config.lr_base_size, config.lr_base_scale,
                          batch_size, config.opt)
    schedule, num_epochs = optim.create_lr_schedule(
        config.sched, lr, config.epochs, updates_per_epoch, config.warmup_epochs, config.warmup_lr,
        config.min_lr, config.sched_on_updates, config.decay_epochs, config.decay_rate,
        config.cooldown_epochs, config.warmup_prefix)
    rng = jax.random.PRNGKey(config.seed)
    variables = model.init(rng, jnp.zeros((1, config.img_size, config.img_size, 3)), train=False)
    if config.initial_checkpoint:  # the EMA then starts from these weights, as in timm
        from jax_ema import timm_io
        variables = timm_io.load_initial_variables(config.initial_checkpoint, config.model, num_classes,
                                                   use_ema=config.initial_checkpoint_ema)
    tx = optim.create_optimizer(config.opt, schedule, config.weight_decay, config.momentum, config.opt_eps,
                                config.opt_betas)
    ema_cfg = _ema_config(config)
    state = create_train_state(model, tx, variables, ema_cfg)
    host_ema = ema_cfg is not None and config.model_ema_force_cpu
    if host_ema:
        state = state.replace(ema_params=offload.to_host(state.ema_params),
                              ema_batch_stats=offload.to_host(state.ema_batch_stats))
    _warn_horizon(ema_cfg, num_epochs * updates_per_epoch)

    run_dir = reporting.make_run_dir(config.output, config.experiment, config.model, config.img_size) \
        if run_dir is None else run_dir
    log.info('Run folder: %s', run_dir)
    reporting.write_args(run_dir, config)
    manager = checkpoint.open_manager(run_dir / 'checkpoints', config.checkpoint_hist)
    board = reporting.TensorBoard(run_dir)
    log.info('Model %s (%d classes), %d train / %d validation images, %d updates per epoch, lr %g, EMA %s',
             config.model, num_classes, train_ds.num_examples, val_ds.num_examples, updates_per_epoch, lr,
             'off' if ema_cfg is None else f'decay {ema_cfg.decay}' + (' on host' if host_ema else ''))

    p_train = jax.jit(functools.partial(train_step, ema_cfg=None if host_ema else ema_cfg,
                                        smoothing=config.smoothing), donate_argnums=0)
    p_eval = jax.jit(functools.partial(eval_step, apply_fn=model.apply))
    host_update = offload.host_ema_update(ema_cfg) if host_ema else None
    eval_bs = config.validation_batch_size or batch_size
    rows, best = [], (None, -1)
    for epoch in range(num_epochs):
        state, train_loss = _train_epoch(p_train, host_update, state, train_ds, batch_size, epoch,
                                         num_epochs, updates_per_epoch, schedule, config.log_interval)
        raw = evaluate(p_eval, state.params, state.batch_stats, val_ds, eval_bs)
        log.info('Test: Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f', raw['loss'], raw['top1'], raw['top5'])
        ema_metrics = None
        if state.ema_params is not None:
            ema_params, ema_stats = (offload.to_device((state.ema_params, state.ema_batch_stats)) if host_ema
                                     else (state.ema_params, state.ema_batch_stats))
            ema_metrics = evaluate(p_eval, ema_params, ema_stats, val_ds, eval_bs)
            log.info('Test (EMA): Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f',
                     ema_metrics['loss'], ema_metrics['top1'], ema_metrics['top5'])
        epoch_lr = float(schedule((epoch + 1) * updates_per_epoch - 1))  # timm: lr at the epoch's end
        row = reporting.summary_row(epoch, train_loss, epoch_lr, raw, ema_metrics)
        rows.append(row)
        reporting.append_summary(run_dir, row)
        board.scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
        reporting.plot_metrics(run_dir, [{k: str(v) for k, v in r.items()} for r in rows])
        main = ema_metrics or raw
        score = -main['loss'] if config.eval_metric == 'loss' else main[config.eval_metric]
        checkpoint.save(manager, state, _metadata(config, num_classes, ema_cfg, epoch,
                                                  {'raw': raw, 'ema': ema_metrics}), score)
        if best[0] is None or score > best[0]:
            best = (score, epoch)
    board.close()
    manager.close()
    best_value = -best[0] if config.eval_metric == 'loss' else best[0]
    log.info('*** Best metric: %s (epoch %d)', best_value, best[1])
    results = {'best_metric': best_value, 'best_epoch': best[1],
               'final': {'raw': _final(rows[-1], 'raw'), 'ema': _final(rows[-1], 'ema') if ema_cfg else None},
               'ema': (dict(dataclasses.asdict(ema_cfg), force_cpu=config.model_ema_force_cpu)
                       if ema_cfg else None)}
    reporting.write_results(run_dir, results)
    return dict(results, run_dir=str(run_dir))


def _final(row: dict, prefix: str) -> dict:
    return {k: row[f'{prefix}_eval_{k}'] for k in ('top1', 'top5', 'loss')}


def _train_epoch(p_train, host_update, state, dataset, batch_size, epoch, num_epochs, updates_per_epoch,
                 schedule, log_interval):
    """One epoch with a tqdm bar; losses are summed on device and read only every `log_interval` steps."""
    loss_sum, n, seen, t0 = jnp.zeros(()), 0, 0, time.perf_counter()
    bar = tqdm(total=updates_per_epoch, desc=f'Train {epoch}/{num_epochs - 1}', unit='step',
               dynamic_ncols=True, leave=False, file=sys.stderr)
    for batch in dataset.train_batches(batch_size, epoch):
        step_before = epoch * updates_per_epoch + n
        if host_update is None:
            state, metrics = p_train(state, batch)
        else:
            ema_params, ema_stats = state.ema_params, state.ema_batch_stats
            state, metrics = p_train(state.replace(ema_params=None, ema_batch_stats=None), batch)
            ema_params, ema_stats = host_update(ema_params, ema_stats, state.params, state.batch_stats,
                                                state.step)
            state = state.replace(ema_params=ema_params, ema_batch_stats=ema_stats)
        loss_sum, n, seen = loss_sum + metrics['loss'], n + 1, seen + len(batch['label'])
        bar.update(1)
        if n % log_interval == 0 or n == updates_per_epoch:
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f'{float(loss_sum) / n:.4f}', lr=f'{float(schedule(step_before)):.3g}',
                            img_s=f'{rate:.0f}')
    bar.close()
    train_loss = float(loss_sum) / max(n, 1)
    log.info('Train: %d  Loss: %.4f  (%d updates, %.1f img/s)', epoch, train_loss, n,
             seen / (time.perf_counter() - t0))
    return state, train_loss


def main(argv=None) -> int:
    """CLI entry: parse timm-style flags, train, print `--result` and the results JSON as timm does."""
    def run():
        config = parse_args(argv)
        results = train_and_evaluate(config)
        import json
        print('--result')
        print(json.dumps({k: v for k, v in results.items() if k != 'run_dir'}, indent=4))
        return 0
    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
