"""What a `Config` builds, as timm's train.py builds it: the data, the model's kwargs, the optimizer and
lr schedule, the EMA settings, and what a checkpoint says about its run."""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp

from jax_ema import ema, optim
from jax_ema.config import Config

log = logging.getLogger('jax_ema.train')


def ema_config(config: Config) -> ema.EmaConfig | None:
    return ema.EmaConfig(decay=config.model_ema_decay, use_warmup=config.model_ema_warmup,
                         update_every=config.model_ema_update_every, extra_decays=config.model_ema_extra_decays,
                         stds=config.model_ema_stds) if config.model_ema else None


def warn_horizon(ema_cfg, total_updates: int) -> None:
    """Warn when an EMA's horizon 1/(1-decay) exceeds the run: suggest the decay warmup, or a decay whose horizon
    is a tenth of the run (at least 2 updates), so that an EMA is still kept."""
    for decay in ema_cfg.decays if ema_cfg is not None and not ema_cfg.use_warmup else ():
        horizon = ema_cfg.single(decay).horizon
        if horizon > total_updates:
            suggested = 1.0 - 1.0 / max(total_updates / 10.0, 2.0)
            log.warning('The EMA horizon 1/(1-%g) = %.0f updates exceeds this run\'s %d updates: the EMA will '
                        'stay near the initial weights. Add --model-ema-warmup, or use --model-ema-decay %.4g '
                        '(a horizon of %.0f updates).', decay, horizon, total_updates, suggested,
                        1.0 / (1.0 - suggested))


def load_data(config: Config):
    from jax_ema import data  # the only package that imports tensorflow
    cfg = data.DataConfig(data_dir=config.data, train_split=config.train_split, val_split=config.val_split,
                          val_split_fraction=config.val_split_fraction, img_size=config.img_size,
                          num_classes=config.num_classes, seed=config.seed, scale=config.scale,
                          ratio=config.ratio, hflip=config.hflip, crop_pct=config.crop_pct,
                          num_workers=config.workers, auto_augment=config.aa, reprob=config.reprob,
                          remode=config.remode, recount=config.recount)
    return data.load_datasets(cfg)


def checkpoint_metadata(config: Config, num_classes: int, ema_cfg, epoch: int, position: int, metrics=None) -> dict:
    """What a checkpoint says about itself; `position` = updates done within `epoch`."""
    return dict(model=config.model, num_classes=num_classes, img_size=config.img_size, opt=config.opt,
                ema=dataclasses.asdict(ema_cfg) if ema_cfg else None, host_ema=config.model_ema_force_cpu,
                epoch=epoch, position=position, metrics=metrics,
                loss_scale=bool(config.amp and config.amp_dtype == 'float16'))


def check_trainable(model, variables, batch_size: int, img_size: int) -> None:
    """Trace one train-mode forward (no compute): a too small --img-size fails here, before any output."""
    x = jax.ShapeDtypeStruct((batch_size, img_size, img_size, 3), jnp.float32)
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                            rngs={'dropout': jax.random.PRNGKey(0)}), variables, x)


def model_kwargs(config: Config) -> dict:
    """timm's --drop / --drop-path as create_model kwargs (left out when 0, as timm leaves out None)."""
    rates = {'drop_rate': config.drop, 'drop_path_rate': config.drop_path}
    return {k: v for k, v in rates.items() if v}


def create_optimizer_and_schedule(config: Config, updates_per_epoch: int, batch_size: int):
    """(lr, schedule, num_epochs, tx) from the optimizer and schedule flags, as timm's train.py builds them;
    batch_size is the global batch per optimizer update (for --lr-base scaling)."""
    lr = optim.resolve_lr(config.lr, config.lr_base, config.lr_base_size, config.lr_base_scale,
                          batch_size, config.opt)
    schedule, num_epochs = optim.create_lr_schedule(
        config.sched, lr, config.epochs, updates_per_epoch, config.warmup_epochs, config.warmup_lr,
        config.min_lr, config.sched_on_updates, config.decay_epochs, config.decay_rate,
        config.cooldown_epochs, config.warmup_prefix, config.lr_noise, config.lr_noise_pct, config.lr_noise_std,
        config.seed)
    tx = optim.create_optimizer(config.opt, schedule, config.weight_decay, config.momentum, config.opt_eps,
                                config.opt_betas)
    return lr, schedule, num_epochs, tx
