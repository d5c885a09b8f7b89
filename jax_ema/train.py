"""The training run and its CLI: `python -m jax_ema.train [DATA] --model resnet50 --model-ema ...`.

`train_and_evaluate(config)` is the epoch loop, read top to bottom; the small functions after it are its
steps: set up (data, model, optimizer, state), resume, validate an epoch (raw weights and every EMA),
write the records (summary.csv, TensorBoard, checkpoints), and the results. The TrainState and the pure
step functions are step.py's; where the EMA lives and the step built for it, offload.py's.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_ema import (checkpoint, data_config, device_input, ema, loop, offload, optim, parallel, posthoc,
                     precision, pretrained, reporting)
from jax_ema.cli import run_cli
from jax_ema.config import Config, parse_args
from jax_ema.errors import UserError
from jax_ema.guard import Preemption
from jax_ema.models import create_model, drop_kwargs
from jax_ema.step import TrainState, create_train_state, eval_step, evaluate, restore_state, train_step

log = logging.getLogger('jax_ema.train')  # also under `python -m`, where __name__ is '__main__'

METRIC_KEYS = ('loss', 'top1', 'top5')
_PLACEMENT_NOTE = {'device': '', 'host': ' on host', 'sharded': ' sharded'}


@dataclasses.dataclass
class Run:
    """What the set-up builds from a Config and the loop reads."""
    config: Config
    model: Any
    train_ds: Any
    val_ds: Any
    num_classes: int
    batch_size: int            # rows per optimizer update, over every device
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
    run, state = setup(config)
    resumed_from = None
    if config.resume:
        state, resumed_from = resume(run, state)
        if run_dir is None and resumed_from.parent.name == 'checkpoints':
            run_dir = resumed_from.parent.parent  # go on in the same run folder
    state = offload.place_state(state, config.ema_placement)
    _warn_ema_horizon(run.ema_cfg, run.total_updates)
    start = int(jax.device_get(state.step))
    records = Records.open(run, run_dir, resumed_from, start)
    step = offload.build_step(functools.partial(train_step, smoothing=config.smoothing,
                                                accum_steps=config.grad_accum_steps, seed=config.seed,
                                                inputs=run.train_ds.device_input),
                              run.ema_cfg, config.ema_placement, last=start)
    eval_step_fn = jax.jit(functools.partial(eval_step, apply_fn=run.model.apply, inputs=run.val_ds.device_input))
    preemption = Preemption()
    after_update = _after_update(run, records, step, preemption)
    with preemption:
        for epoch in range(start // run.updates_per_epoch, run.num_epochs):
            first = start - epoch * run.updates_per_epoch if epoch == start // run.updates_per_epoch else 0
            state, train_loss, stopped = loop.train_epoch(
                step, state, _train_batches(run, epoch, first), epoch=epoch, num_epochs=run.num_epochs,
                updates_per_epoch=run.updates_per_epoch, first_update=first, schedule=run.schedule,
                log_interval=config.log_interval, after_update=after_update)
            if stopped:
                records.close()
                return {'preempted': True, 'run_dir': str(records.run_dir), 'step': int(jax.device_get(state.step))}
            state = step.flush(state, (epoch + 1) * run.updates_per_epoch)
            metrics = validate_epoch(run, eval_step_fn, state)
            records.end_epoch(run, state, epoch, train_loss, metrics)
    records.close()
    results = final_results(run, records.rows)
    reporting.write_results(records.run_dir, results)
    return dict(results, run_dir=str(records.run_dir))


# ---------------------------------------------------------------- set-up and resume

def setup(config: Config) -> tuple[Run, TrainState]:
    """Data, model, optimizer and schedule, and the initial TrainState (on one device, EMA included).

    Every bad input is found here, before the run folder is made: an unknown model before the data is
    read, a too small --img-size by tracing one forward, --pretrained weights missing from the hub's cache
    before the data is read too."""
    parallel.initialize(config.coordinator_address, config.num_processes, config.process_id, config.distributed)
    log.info(data_config.describe(config.model, config.data_config))  # resolved by Config, as timm's
    model_kwargs = drop_kwargs(config.drop, config.drop_path)
    create_model(config.model, 1, **model_kwargs)  # an unknown model name fails before the data is read
    pretrained_weights = None  # --pretrained, unless other weights replace them (as in timm) or a resume does
    if config.pretrained and not (config.initial_checkpoint or config.resume):
        pretrained_weights = pretrained.read_weights(config.model, config.pretrained_path)
    compute_dtype, param_dtype, loss_scaling = precision.resolve(config.amp, config.amp_dtype, config.model_dtype)
    from jax_ema import data  # the only package that imports tensorflow
    train_ds, val_ds = data.load_datasets(data.data_config(config))
    num_classes = train_ds.num_classes
    model = create_model(config.model, num_classes, dtype=compute_dtype, param_dtype=param_dtype, **model_kwargs)
    batch_size = config.batch_size * jax.device_count() * config.grad_accum_steps  # rows per update
    updates_per_epoch = train_ds.steps_per_epoch(batch_size)
    lr, schedule, num_epochs, tx = optim.create_optimizer_and_schedule(config, updates_per_epoch, batch_size)
    if config.initial_checkpoint:  # the EMA then starts from these weights, as in timm
        from jax_ema import timm_io
        variables = timm_io.load_initial_variables(config.initial_checkpoint, config.model, num_classes,
                                                   use_ema=config.initial_checkpoint_ema)
        variables = precision.cast_params(variables, param_dtype)  # timm files are read as float32
    else:  # jitted: one compile instead of one per parameter shape (eager init of a MobileNet compiles hundreds)
        variables = jax.jit(functools.partial(model.init, train=False))(
            jax.random.PRNGKey(config.seed), jnp.zeros((1, config.img_size, config.img_size, 3)))
        if pretrained_weights is not None:  # a classifier that does not fit the classes keeps this initialisation
            variables = precision.cast_params(
                pretrained.load_pretrained(config.model, num_classes, variables, pretrained_weights), param_dtype)
    _check_trainable(model, variables, batch_size // config.grad_accum_steps, config.img_size)
    if param_dtype != jnp.float32:
        tx = precision.fp32_optimizer(tx)
    ema_cfg = config.ema_config()
    state = create_train_state(model, tx, variables, ema_cfg)
    if loss_scaling:
        state = state.replace(loss_scale=precision.LossScale.create())
    run = Run(config, model, train_ds, val_ds, num_classes, batch_size, updates_per_epoch, num_epochs, lr,
              schedule, ema_cfg)
    return run, state


def _check_trainable(model, variables, batch_size: int, img_size: int) -> None:
    """Trace one train-mode forward (no compute): a too small --img-size fails here, before any output."""
    x = jax.ShapeDtypeStruct((batch_size, img_size, img_size, 3), jnp.float32)
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                            rngs={'dropout': jax.random.PRNGKey(0)}), variables, x)


def resume(run: Run, state: TrainState) -> tuple[TrainState, Path]:
    """(state, step folder) from `--resume`; checks the checkpoint is of this model, classes and optimizer."""
    config = run.config
    step_dir = checkpoint.resolve(config.resume)
    meta = checkpoint.read_metadata(step_dir)
    if (meta.get('model'), meta.get('num_classes')) != (config.model, run.num_classes):
        raise UserError(f'--resume {config.resume!r} holds {meta.get("model")} with {meta.get("num_classes")} '
                        f'classes, but this run is {config.model} with {run.num_classes}; resume with the same '
                        '--model and data')
    if meta.get('opt', config.opt) != config.opt and not config.no_resume_opt:
        raise UserError(f'--resume {config.resume!r} was trained with --opt {meta["opt"]}, this run asks for '
                        f'--opt {config.opt}; use the same --opt, or add --no-resume-opt to start it afresh')
    restored = restore_state(step_dir, state, restore_opt=not config.no_resume_opt)
    log.info('Resumed from %s (update %d)', step_dir, int(restored.step))
    return restored, step_dir


def _warn_ema_horizon(ema_cfg: ema.EmaConfig | None, total_updates: int) -> None:
    for decay in ema_cfg.decays if ema_cfg is not None and not ema_cfg.use_warmup else ():
        horizon = ema_cfg.single(decay).horizon
        if horizon > total_updates:
            log.warning('The EMA horizon 1/(1-%g) = %.0f updates exceeds this run\'s %d updates: the EMA will '
                        'stay near the initial weights. Add --model-ema-warmup or use a smaller --model-ema-decay '
                        '(e.g. %.4g).', decay, horizon, total_updates,
                        max(0.0, 1.0 - 10.0 / max(total_updates, 1)))


def _train_batches(run: Run, epoch: int, first: int):
    """The epoch's batches from update `first` on, this process's rows, sharded over the mesh; the next ones
    are put on the device while the current step runs."""
    return device_input.prefetch(run.train_ds.train_batches(
        run.batch_size, epoch, start_step=first, process_index=jax.process_index(),
        process_count=jax.process_count()), parallel.shard_batch)


# ---------------------------------------------------------------- during the epoch

def _after_update(run: Run, records: Records, step: offload.Step, preemption: Preemption):
    """The loop's hook after each update: EMA snapshots, recovery checkpoints, a preemption's save."""
    config = run.config

    def after_update(state, count, check_finite):
        epoch, position = divmod(count, run.updates_per_epoch)
        if run.ema_cfg is not None and posthoc.snapshot_due(count, config.model_ema_snapshot_every,
                                                            run.total_updates):
            state = step.flush(state, count)
            if parallel.is_main():
                posthoc.save_snapshot(records.run_dir, count, run.ema_cfg, state.ema_params, state.ema_batch_stats,
                                      config.snapshot_dtype)
        stop = preemption.agreed()
        if stop or (config.recovery_interval and count % config.recovery_interval == 0 and position != 0):
            check_finite()
            state = step.flush(state, count)
            checkpoint.save(records.manager, state, checkpoint.run_metadata(config, run.num_classes, run.ema_cfg,
                                                                            epoch, position))
        if stop and parallel.is_main():
            print(f'Stopped by {preemption.signal_name or "a signal"} at update {count}; saved a checkpoint. '
                  f'Resume with: python -m jax_ema.train ... --resume {records.run_dir}', flush=True)
        return state, stop
    return after_update


# ---------------------------------------------------------------- validation

def validate_epoch(run: Run, eval_step_fn, state: TrainState) -> dict:
    """{'raw', 'ema', 'members', 'best'}: the raw weights' metrics, the EMA's (member 0's), with several
    EMAs every member's (else []) and the index of the best one."""
    eval_batch_size = (run.config.validation_batch_size or run.config.batch_size) * jax.device_count()

    def evaluate_split(params, batch_stats):
        return evaluate(eval_step_fn, params, batch_stats, run.val_ds, eval_batch_size)

    raw = evaluate_split(state.params, state.batch_stats)
    log.info('Test: Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f', raw['loss'], raw['top1'], raw['top5'])
    if state.ema_params is None:
        return dict(raw=raw, ema=None, members=[], best=0)
    labels = ['EMA'] if run.ema_cfg.members == 1 else [f'EMA {n}' for n in ema.member_names(run.ema_cfg)]
    members = evaluate_members(evaluate_split, *offload.ema_for_eval(state), labels)
    if len(members) == 1:
        return dict(raw=raw, ema=members[0], members=[], best=0)
    return dict(raw=raw, ema=members[0], members=members, best=best_index(members, run.score))


def evaluate_members(evaluate_one, ema_params, ema_stats, labels) -> list[dict]:
    """`evaluate_one(params, stats)` of every EMA member (one jitted eval serves all: same [n] shapes), each
    sent to the devices on its own and logged by its label."""
    results = []
    for i, label in enumerate(labels):
        m = evaluate_one(*offload.to_device((ema.member(ema_params, i), ema.member(ema_stats, i))))
        log.info('Test (%s): Loss: %.4f  Acc@1: %.3f  Acc@5: %.3f', label, m['loss'], m['top1'], m['top5'])
        results.append(m)
    return results


def best_index(member_metrics: list[dict], score) -> int:
    """The member with the highest `score(metrics)`; ties go to the lower index."""
    return int(np.argmax([score(m) for m in member_metrics]))


# ---------------------------------------------------------------- records and results

@dataclasses.dataclass
class Records:
    """The run folder's writers: checkpoints (orbax), summary.csv rows, TensorBoard, metrics.png."""
    run_dir: Path
    manager: Any
    board: reporting.TensorBoard
    rows: list

    @classmethod
    def open(cls, run: Run, run_dir, resumed_from, start: int) -> Records:
        """The run folder (a new one, or the resumed run's), with the summary rows of the epochs done."""
        config = run.config
        if run_dir is None and parallel.is_main():
            run_dir = reporting.make_run_dir(config.output, config.experiment, config.model, config.img_size)
        run_dir = Path(parallel.broadcast_path(run_dir))  # process 0's
        log.info('Run folder: %s', run_dir)
        reporting.write_args(run_dir, config)
        manager = checkpoint.open_manager(run_dir / 'checkpoints', config.checkpoint_hist)
        board = reporting.TensorBoard(run_dir)
        ema_note = 'off' if run.ema_cfg is None else (', '.join(ema.member_names(run.ema_cfg))
                                                      + _PLACEMENT_NOTE[config.ema_placement])
        log.info('Model %s (%d classes), %d train / %d validation images, %d updates per epoch, lr %g, EMA %s',
                 config.model, run.num_classes, run.train_ds.num_examples, run.val_ds.num_examples,
                 run.updates_per_epoch, run.lr, ema_note)
        rows = [r for r in reporting.read_summary(run_dir) if int(r['epoch']) < start // run.updates_per_epoch] \
            if resumed_from is not None and (run_dir / 'summary.csv').exists() else []
        return cls(run_dir, manager, board, rows)

    def end_epoch(self, run: Run, state, epoch: int, train_loss: float, metrics: dict) -> None:
        """summary.csv, TensorBoard and metrics.png get the epoch's row; a checkpoint scored by the best EMA
        (else the raw weights) is saved."""
        raw, ema_metrics, members, best = metrics['raw'], metrics['ema'], metrics['members'], metrics['best']
        epoch_lr = float(run.schedule((epoch + 1) * run.updates_per_epoch - 1))  # timm: lr at the epoch's end
        row = reporting.summary_row(epoch, train_loss, epoch_lr, raw, ema_metrics, members[1:])
        self.rows.append(row)
        reporting.append_summary(self.run_dir, row)
        self.board.scalars(epoch, {k: v for k, v in row.items() if k != 'epoch'})
        reporting.plot_metrics(self.run_dir, self.rows,
                               member_names=ema.member_names(run.ema_cfg) if run.ema_cfg else None)
        meta = checkpoint.run_metadata(run.config, run.num_classes, run.ema_cfg, epoch, run.updates_per_epoch,
                                       {'raw': raw, 'ema': ema_metrics})
        meta['unreadable_images'] = run.train_ds.skipped_images(epoch)  # slots that took the next image
        if members:
            meta.update(best_ema_index=best, metrics=dict(meta['metrics'], ema_members=members))
        checkpoint.save(self.manager, state, meta, run.score((members or [ema_metrics or raw])[best]))

    def close(self) -> None:
        self.board.close()
        self.manager.close()


def final_results(run: Run, rows: list[dict]) -> dict:
    """results.json: the best epoch's metric (over every EMA member too), the last epoch's metrics, the EMA."""
    config, ema_cfg = run.config, run.ema_cfg
    scores = [(run.score({k: r[f'eval_{k}'] for k in METRIC_KEYS}), int(r['epoch'])) for r in rows]
    best_score, best_epoch = max(scores, key=lambda se: (se[0], -se[1]))
    several = ema_cfg is not None and ema_cfg.members > 1
    if several:  # the best over every member too
        best_score, best_epoch, best_member = best_over_rows(rows, run.score)
    best_value = -best_score if config.eval_metric == 'loss' else best_score
    log.info('*** Best metric: %s (epoch %d)', best_value, best_epoch)
    results = {'best_metric': best_value, 'best_epoch': best_epoch,
               'final': {'raw': _final(rows[-1], 'raw'), 'ema': _final(rows[-1], 'ema') if ema_cfg else None},
               'ema': (dict(dataclasses.asdict(ema_cfg), force_cpu=config.model_ema_force_cpu,
                            shard=config.model_ema_shard)
                       if ema_cfg else None)}
    if several:
        results.update(ema_decays=list(ema_cfg.decays), ema_stds=list(ema_cfg.stds), best_ema_index=best_member,
                       best_ema=describe_member(ema_cfg, best_member))
        results['final']['ema_members'] = [_final(rows[-1], prefix) for prefix in reporting.member_prefixes(rows[-1])]
    return results


def best_over_rows(rows: list[dict], score) -> tuple[float, int, int]:
    """(best score, its epoch, its member) over every epoch and EMA member of summary.csv rows; ties: the
    earliest epoch, then the lower member."""
    best = None
    for row in rows:
        for i, prefix in enumerate(reporting.member_prefixes(row)):
            value = score({k: float(row[f'{prefix}_eval_{k}']) for k in METRIC_KEYS})
            key = (value, -int(row['epoch']), -i)
            best = key if best is None or key > best else best
    return best[0], -best[1], -best[2]


def describe_member(cfg: ema.EmaConfig, index: int) -> dict:
    """{'index': i, 'decay': d} or {'index': i, 'std': s} for member `index`."""
    if index < len(cfg.decays):
        return {'index': index, 'decay': cfg.decays[index]}
    return {'index': index, 'std': cfg.stds[index - len(cfg.decays)]}


def _final(row: dict, prefix: str) -> dict:
    return {k: float(row[f'{prefix}_eval_{k}']) for k in ('top1', 'top5', 'loss')}


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
