"""The training run and its CLI: `python -m jax_ema.train [DATA] --model resnet50 --model-ema ...`.

`train_and_evaluate(config)` is the epoch loop, read top to bottom; the small functions after it are its
steps: set up (data, model, optimizer, state), resume, validate an epoch (raw weights and every EMA),
and the records (records.py: the run folder and its lock, checkpoints, summary.csv, TensorBoard, results).
The TrainState and the pure step functions are step.py's; where the EMA lives and the step built for it,
offload.py's; the fault hooks the tests use to kill or signal at a named point, faults.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jax_ema import (
    batch_images,
    checkpoint,
    clip_grad,
    data_config,
    data_fingerprint,
    device,
    device_input,
    ema,
    epoch_end,
    loop,
    losses,
    mixup,
    offload,
    optim,
    parallel,
    posthoc,
    precision,
    pretrained,
    reporting,
)
from jax_ema.cli import run_cli
from jax_ema.config import Config, parse_args
from jax_ema.errors import UserError
from jax_ema.flags import compat
from jax_ema.guard import Preemption
from jax_ema.models import (
    arch_kwargs,
    create_model,
    describe_kwargs,
    init_head,
    model_kwargs,
    same_model,
    step_compiler_options,
)
from jax_ema.plateau import PlateauSchedule
from jax_ema.records import (
    Records,
    final_results,
    restore_plateau,
    resume_position,
    start_at_epoch,
    unvalidated_epoch,
)
from jax_ema.step import TrainState, create_train_state, eval_step, restore_state, train_step

log = logging.getLogger('jax_ema.train')  # also under `python -m`, where __name__ is '__main__'


@dataclasses.dataclass
class Run:
    """What the set-up builds from a Config and the loop reads."""

    config: Config
    model: Any
    train_ds: Any
    val_ds: Any
    num_classes: int
    batch_size: int  # rows per optimizer update, over every device
    updates_per_epoch: int
    num_epochs: int
    lr: float
    schedule: Callable
    ema_cfg: ema.EmaConfig | None

    @property
    def total_updates(self) -> int:
        return self.num_epochs * self.updates_per_epoch

    def score(self, metrics: dict) -> float:
        """Higher is better: the --eval-metric itself, or minus the loss."""
        if self.config.eval_metric == 'loss':
            return -float(metrics['loss'])
        return float(metrics[self.config.eval_metric])


def train_and_evaluate(config: Config, run_dir=None) -> dict:
    """Train and validate raw and EMA weights every epoch; returns the results dict (also results.json)."""
    with contextlib.ExitStack() as cleanup:  # the run lock, checkpoints and TensorBoard closed on any exit
        run, state = setup(config)
        data_fp = data_fingerprint.of_datasets(run.train_ds, run.val_ds)
        resumed_from, resumed_meta, carried_loss = None, None, None
        if config.resume:
            state, resumed_from = resume(run, state)
            resumed_meta = checkpoint.read_metadata(resumed_from)
            state, carried_loss = resume_position(run, state, resumed_meta, data_fp, resumed_from)
        if config.start_epoch is not None:  # as timm: overrides a resume's epoch
            state, resumed_meta = start_at_epoch(run, state, resumed_meta, config.start_epoch)
            carried_loss = None
        restore_plateau(run, resumed_meta, int(jax.device_get(state.step)))
        state = offload.place_state(state, config.ema_placement)
        _warn_ema_horizon(run.ema_cfg, run.total_updates)
        start = int(jax.device_get(state.step))
        records = Records.open(run, run_dir, resumed_from, resumed_meta, start, data_fp, carried_loss, cleanup)
        step = offload.build_step(
            functools.partial(
                train_step,
                smoothing=config.smoothing,
                accum_steps=config.grad_accum_steps,
                seed=config.seed,
                inputs=run.train_ds.device_input,
                mixup=mixup.of_config(config, run.updates_per_epoch, run.num_classes),
                train_loss=losses.of_config(config),
                clip=clip_grad.of_config(config),
                erase_first=config.no_prefetcher,
            ),
            run.ema_cfg,
            config.ema_placement,
            last=start,
            compiler_options=step_compiler_options(model_kwargs(config)),
        )
        eval_step_fn = jax.jit(functools.partial(eval_step, apply_fn=run.model.apply, inputs=run.val_ds.device_input))
        stopped_epoch = unvalidated_epoch(resumed_meta)
        if stopped_epoch is not None:  # stopped on an epoch's last update, before validating it: validate it now
            loss = resumed_meta['train_loss_partial']
            epoch_end.end_epoch(
                run,
                eval_step_fn,
                records,
                state,
                stopped_epoch,
                loss['sum'] / max(loss['count'], 1),
                resumed_from if records.continuing else None,
            )
        preemption = Preemption()
        after_update = _after_update(run, records, step, preemption)
        with preemption:
            for epoch in range(start // run.updates_per_epoch, run.num_epochs):
                first = start - epoch * run.updates_per_epoch if epoch == start // run.updates_per_epoch else 0
                if isinstance(run.schedule, PlateauSchedule):  # its lr for this epoch, into the optimizer state
                    state = state.replace(opt_state=optim.set_lr(state.opt_state, run.schedule()))
                state, train_loss, stopped = loop.train_epoch(
                    step,
                    state,
                    _train_batches(run, epoch, first, records.run_dir if config.save_images else None),
                    epoch=epoch,
                    num_epochs=run.num_epochs,
                    updates_per_epoch=run.updates_per_epoch,
                    first_update=first,
                    schedule=run.schedule,
                    log_interval=config.log_interval,
                    after_update=after_update,
                )
                if stopped:
                    return {'preempted': True, 'run_dir': str(records.run_dir), 'step': int(jax.device_get(state.step))}
                if first and records.carried_loss:  # the epoch began before the resume: its loss covers all of it
                    total = records.epoch_loss(run, epoch, train_loss, run.updates_per_epoch)
                    train_loss = total['sum'] / total['count']
                state = step.flush(state, (epoch + 1) * run.updates_per_epoch)
                epoch_end.end_epoch(run, eval_step_fn, records, state, epoch, train_loss)
        results = final_results(run, records.rows)
        if results is None:
            log.info('Nothing left to train: the checkpoint is at update %d of %d', start, run.total_updates)
            return {'run_dir': str(records.run_dir), 'best_metric': None}
        log.info('*** Best metric: %s (epoch %d)', results['best_metric'], results['best_epoch'])
        reporting.write_results(records.run_dir, results)  # also when a resume had nothing left to train
        return dict(results, run_dir=str(records.run_dir))


# ---------------------------------------------------------------- set-up and resume


def setup(config: Config) -> tuple[Run, TrainState]:
    """Data, model, optimizer and schedule, and the initial TrainState (on one device, EMA included).

    Every bad input is found here, before the run folder is made: an unknown model before the data is
    read, a too small --img-size by tracing one forward, --pretrained weights missing from the hub's cache
    before the data is read too."""
    parallel.initialize(config.coordinator_address, config.num_processes, config.process_id, config.distributed)
    device.check(config.device)  # after jax.distributed, which must come before the backends start
    notes = compat.notes(config)
    if notes:
        log.info('timm options, what they mean here: %s', '; '.join(notes))
    log.info(data_config.describe(config.model, config.data_config))  # resolved by Config, as timm's
    try:
        kwargs = model_kwargs(config)
        create_model(config.model, 1, **kwargs)  # an unknown model or option it does not take fails before the data
    except TypeError as err:  # an argument the model does not have (--model-kwargs)
        raise UserError(f'--model-kwargs: {config.model} does not take it ({err}); fix or leave it out') from None
    _note_no_effect(config)
    pretrained_weights = None  # --pretrained, unless other weights replace them (as in timm) or a resume does
    if config.pretrained and not (config.initial_checkpoint or config.resume):
        pretrained_weights = pretrained.read_weights(config.model, config.pretrained_path)
    compute_dtype, param_dtype, loss_scaling = precision.resolve(config.amp, config.amp_dtype, config.model_dtype)
    from jax_ema import data  # the only package that imports tensorflow

    train_ds, val_ds = data.load_datasets(data.data_config(config))
    num_classes = train_ds.num_classes
    model = create_model(config.model, num_classes, dtype=compute_dtype, param_dtype=param_dtype, **kwargs)
    batch_size = config.batch_size * jax.device_count() * config.grad_accum_steps  # rows per update
    updates_per_epoch = train_ds.steps_per_epoch(batch_size, replicas=jax.device_count())
    lr, schedule, num_epochs, tx = optim.create_optimizer_and_schedule(config, updates_per_epoch, batch_size)
    if config.start_epoch is not None and config.start_epoch >= num_epochs:
        raise UserError(
            f'--start-epoch {config.start_epoch} is not before the end of the schedule ({num_epochs} epochs); '
            'nothing would be trained: lower --start-epoch or raise --epochs'
        )
    if config.initial_checkpoint:  # the EMA then starts from these weights, as in timm
        from jax_ema import timm_io

        variables = timm_io.load_initial_variables(
            config.initial_checkpoint, config.model, num_classes, use_ema=config.initial_checkpoint_ema, arch=kwargs
        )
        variables = precision.cast_params(variables, param_dtype)  # timm files are read as float32
    else:  # jitted: one compile instead of one per parameter shape (eager init of a MobileNet compiles hundreds)
        variables = jax.jit(functools.partial(model.init, train=False))(
            jax.random.PRNGKey(config.seed), jnp.zeros((1, config.img_size, config.img_size, model.in_chans))
        )
        if pretrained_weights is not None:  # a classifier that does not fit the classes keeps this initialisation
            variables = precision.cast_params(
                pretrained.load_pretrained(config.model, num_classes, variables, pretrained_weights, kwargs),
                param_dtype,
            )
    variables = init_head(variables, config.head_init_scale, config.head_init_bias)  # as timm, after any weights
    _check_trainable(model, variables, batch_size // config.grad_accum_steps, config.img_size)
    if param_dtype != jnp.float32:
        tx = precision.fp32_optimizer(tx)
    ema_cfg = config.ema_config()
    state = create_train_state(model, tx, variables, ema_cfg)
    if loss_scaling:
        state = state.replace(loss_scale=precision.LossScale.create())
    run = Run(
        config, model, train_ds, val_ds, num_classes, batch_size, updates_per_epoch, num_epochs, lr, schedule, ema_cfg
    )
    return run, state


def _note_no_effect(config: Config) -> None:
    """One line each for timm flags accepted here without effect (docs/usage.md says why)."""
    notes = [
        (config.drop_connect is not None, '--drop-connect has no effect (timm no longer reads it): use --drop-path'),
        (
            config.train_num_samples is not None or config.val_num_samples is not None,
            '--train-num-samples / --val-num-samples have no effect: as in timm, they are for iterable datasets',
        ),
    ]
    for due, note in notes:
        if due and parallel.is_main():
            log.warning(note)


def _check_trainable(model, variables, batch_size: int, img_size: int) -> None:
    """Trace one train-mode forward (no compute): a too small --img-size fails here, before any output."""
    x = jax.ShapeDtypeStruct((batch_size, img_size, img_size, model.in_chans), jnp.float32)
    jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)}),
        variables,
        x,
    )


def resume(run: Run, state: TrainState) -> tuple[TrainState, Path]:
    """(state, step folder) from `--resume`; checks the checkpoint is of this model, classes and optimizer."""
    config = run.config
    step_dir = checkpoint.resolve(config.resume)
    meta = checkpoint.read_metadata(step_dir)
    if (meta.get('model'), meta.get('num_classes')) != (config.model, run.num_classes):
        raise UserError(
            f'--resume {config.resume!r} holds {meta.get("model")} with {meta.get("num_classes")} '
            f'classes, but this run is {config.model} with {run.num_classes}; resume with the same '
            '--model and data'
        )
    arch = arch_kwargs(model_kwargs(config))
    if not same_model(meta.get('model_kwargs'), arch):
        raise UserError(
            f'--resume {config.resume!r} was trained with {describe_kwargs(meta.get("model_kwargs"))}, this run '
            f'asks for {describe_kwargs(arch)}; resume with the same --gp / --in-chans / --bn-eps / --model-kwargs'
        )
    if meta.get('opt', config.opt) != config.opt and not config.no_resume_opt:
        raise UserError(
            f'--resume {config.resume!r} was trained with --opt {meta["opt"]}, this run asks for '
            f'--opt {config.opt}; use the same --opt, or add --no-resume-opt to start it afresh'
        )
    restored = restore_state(step_dir, state, restore_opt=not config.no_resume_opt)
    log.info('Resumed from %s (update %d)', step_dir, int(restored.step))
    return restored, step_dir


def _warn_ema_horizon(ema_cfg: ema.EmaConfig | None, total_updates: int) -> None:
    """Warn when an EMA's horizon 1/(1-decay) exceeds the run: suggest the decay warmup, or a decay whose horizon
    is a tenth of the run (at least 2 updates), so that an EMA is still kept."""
    for decay in ema_cfg.decays if ema_cfg is not None and not ema_cfg.use_warmup else ():
        horizon = ema_cfg.single(decay).horizon
        if horizon > total_updates:
            suggested = 1.0 - 1.0 / max(total_updates / 10.0, 2.0)
            log.warning(
                "The EMA horizon 1/(1-%g) = %.0f updates exceeds this run's %d updates: the EMA will "
                'stay near the initial weights. Add --model-ema-warmup, or use --model-ema-decay %.4g '
                '(a horizon of %.0f updates).',
                decay,
                horizon,
                total_updates,
                suggested,
                1.0 / (1.0 - suggested),
            )


def _train_batches(run: Run, epoch: int, first: int, save_images_to=None):
    """The epoch's batches from update `first` on, this process's rows, sharded over the mesh; the next ones
    are put on the device while the current step runs. With `save_images_to` (--save-images) the main
    process saves the batches at the log points there."""
    batches = run.train_ds.train_batches(
        run.batch_size,
        epoch,
        start_step=first,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        replicas=jax.device_count(),  # --aug-repeats spreads an image's copies over the devices
    )
    if save_images_to is not None and parallel.is_main():
        batches = batch_images.saving(batches, save_images_to, first, run.updates_per_epoch, run.config.log_interval)
    return device_input.prefetch(batches, parallel.shard_batch)


# ---------------------------------------------------------------- during the epoch


def _after_update(run: Run, records: Records, step: offload.Step, preemption: Preemption):
    """The loop's hook after each update: EMA snapshots, recovery checkpoints, a preemption's save."""
    config = run.config

    def after_update(state, count, check_finite):
        epoch, position = divmod(count - 1, run.updates_per_epoch)  # an epoch's last update is its own
        position += 1
        if run.ema_cfg is not None and posthoc.snapshot_due(count, config.model_ema_snapshot_every, run.total_updates):
            state = step.flush(state, count)
            if parallel.is_main():
                posthoc.save_snapshot(
                    records.run_dir, count, run.ema_cfg, state.ema_params, state.ema_batch_stats, config.snapshot_dtype
                )
        stop = preemption.agreed()
        if stop or (
            config.recovery_interval and count % config.recovery_interval == 0 and position != run.updates_per_epoch
        ):
            mean_loss = check_finite()
            state = step.flush(state, count)
            records.save_recovery(run, state, epoch, position, mean_loss)
        if stop and parallel.is_main():
            print(
                f'Stopped by {preemption.signal_name or "a signal"} at update {count}; saved a checkpoint. '
                f'Resume with: python -m jax_ema.train ... --resume {records.run_dir}',
                flush=True,
            )
        return state, stop

    return after_update


def main(argv=None) -> int:
    """CLI entry: parse timm-style flags, train, and print `--result` and the per-epoch results as timm's
    train.py does (results.json holds ours: the best epoch, every EMA, the decays)."""

    def run():
        config = parse_args(argv)
        device.select(config.device)
        results = train_and_evaluate(config)
        if results.get('preempted') or not parallel.is_main():
            return 0
        summary = Path(results['run_dir']) / 'summary.csv'
        rows = reporting.read_summary(summary.parent) if summary.is_file() else []
        print(f'--result\n{json.dumps(reporting.timm_results(rows, config.eval_metric), indent=4)}', flush=True)
        return 0

    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
