"""Every parity comparison of the suite, measured once, as a markdown table: what | bound | largest error.

    python -m parity_tests.report            # print the table (a few minutes on 2 CPUs)
    python -m parity_tests.report --readme   # also rewrite parity_tests/README.md with it

It reuses the test modules' helpers (and test_trajectory's measuring functions), so it measures what the
tests assert, with the precision pinned as in the tests; it is not part of the test run. Rows marked
"(timm vs timm)" are calibration, not our code: how far timm is from itself under another summation order or precision.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.utils import ModelEmaV3

sys.path.insert(0, str(Path(__file__).parent))  # the test modules import each other as pytest does

from jax_ema import ema, losses  # noqa: E402
from jax_ema.convert import to_flax, to_timm
from jax_ema.models import create_model
from jax_ema.timm_io import load_timm_state_dict, save_timm_safetensors
from parity_tests import (
    test_convert,
    test_efficientnet_parity,
    test_ema_parity,
    test_export_import,
    test_forward,
    test_optim_parity,
    test_trajectory,
)
from torch_ref import precision

README = Path(__file__).with_name('README.md')


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value) -> str:
    return value if isinstance(value, str) else '0' if value == 0 else f'{value:.2g}'


# --------------------------------------------------------------------------- EMA (test_ema_parity)


def ema_rows(num_steps: int | None = None):
    """EMA math rows; `num_steps` (default the tests' 1,000) shortens the trajectories (gpu_check --quick)."""
    t = test_ema_parity
    num_steps = num_steps or t.NUM_STEPS
    check_at = sorted({s for s in t.CHECK_AT if s < num_steps} | {num_steps})
    rows = []
    worst = {'float64': (0.0, ''), 'float32': (0.0, '')}
    for name, (decay, kwargs) in t.SCHEDULE_CONFIGS.items():
        cfg = ema.EmaConfig(decay=decay, **kwargs)
        timm_ema = ModelEmaV3(torch.nn.Linear(1, 1), decay=decay, **kwargs)
        expected = np.array([1.0 - timm_ema.get_decay(int(s)) for s in t.STEPS])
        step_size = jax.jit(functools.partial(ema.step_size, cfg))
        for dtype in ('float64', 'float32'):
            with jax.enable_x64(dtype == 'float64'):
                got = np.asarray(step_size(t.STEPS if dtype == 'float64' else t.STEPS.astype(np.int32)))
            err = float(np.max(np.abs(got.astype(np.float64) - expected) / expected))
            worst[dtype] = max(worst[dtype], (err, name))
    for dtype, bound in (('float64', 1e-12), ('float32', 1e-6)):
        err, name = worst[dtype]
        rows.append(
            (
                f'EMA step size 1 - decay(step) vs ModelEmaV3.get_decay, {len(t.SCHEDULE_CONFIGS)} '
                f'configs x {len(t.STEPS)} steps up to 1e6, {dtype}',
                bound,
                err,
                name,
            )
        )

    for dtype in ('float64', 'float32'):
        err_max, where = 0.0, ''
        for name, (decay, kwargs) in t.TRAJECTORY_CONFIGS.items():
            cfg = ema.EmaConfig(decay=decay, **kwargs)
            rng = np.random.default_rng(0)
            module = t.torch_module().to(t.torch_device(), getattr(torch, dtype))
            with jax.enable_x64(dtype == 'float64'):
                state = t.random_state(rng, module, dtype)
                t.load(module, state)
                timm_ema = ModelEmaV3(module, decay=decay, **kwargs)
                params, stats = t.split(module, state)
                ema_params, ema_stats = ema.init(params), ema.init(stats)
                update = jax.jit(functools.partial(ema.update, cfg))
                for step in range(1, num_steps + 1):
                    state = t.random_state(rng, module, dtype)
                    t.load(module, state)
                    timm_ema.update(module, step=step)
                    ema_params, ema_stats = update(ema_params, ema_stats, *t.split(module, state), step)
                    if step not in check_at:
                        continue
                    ours = {**ema.tree(ema_params), **ema.tree(ema_stats)}
                    for key, ref in timm_ema.module.state_dict().items():
                        ref, got = ref.cpu().numpy(), np.asarray(ours[key])
                        if np.issubdtype(ref.dtype, np.floating):
                            err = float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))
                        else:
                            err = 0.0 if got == ref else float('inf')
                        if err > err_max:
                            err_max, where = err, f'{name}, {key}, step {step}'
        rows.append(
            (
                f'EMA of params + BN buffers vs ModelEmaV3, {len(t.TRAJECTORY_CONFIGS)} configs x '
                f'{num_steps} steps, {dtype} (x max|timm EMA| per tensor)',
                t.TOLERANCE[dtype],
                err_max,
                where,
            )
        )
    return rows


# --------------------------------------------------------------------------- forward (test_forward)


def forward_rows():
    t = test_forward
    rows = []
    for name in t.PARITY_MODELS:
        torch.manual_seed(0)
        timm_init = timm.create_model(name, pretrained=False, num_classes=t.NUM_CLASSES).eval().to(t.DEVICE)
        models = {'timm_init': timm_init, 'random_bn': t._randomise_batchnorms(copy.deepcopy(timm_init), seed=1)}
        flax_model = create_model(name, t.NUM_CLASSES)
        eval_fn = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))  # noqa: B023 (used in this turn)
        err = max(
            t._max_rel_err(
                eval_fn(to_flax(name, t._state_dict(m)), t._images(b, s)), t._torch_forward(m, t._images(b, s))
            )
            for m in models.values()
            for b, s in ((4, 64), (2, 224))
        )
        rows.append((f'{name} eval logits, float32, 64 and 224 px, timm init and random BN', 1e-5, err, ''))

        # train mode, float32: bound max(1e-5, 3 x timm's own float32-vs-float64 error)
        torch_model = models['random_bn']
        torch64 = copy.deepcopy(torch_model).double().train()
        variables = to_flax(name, t._state_dict(torch_model))
        x = t._images(4, 64)
        expected64 = t._torch_forward(torch64, x.astype(np.float64))
        torch32 = copy.deepcopy(torch_model).train()
        expected = t._torch_forward(torch32, x)
        train_fn = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=['batch_stats']))  # noqa: B023
        logits, updates = train_fn(variables, x)
        roundoff = t._max_rel_err(expected, expected64)
        rows.append(
            (
                f'{name} train-mode logits, float32 (bound: max(1e-5, 3 x timm float32 vs float64 = {roundoff:.2g}))',
                max(1e-5, 3 * roundoff),
                t._max_rel_err(logits, expected),
                '',
            )
        )
        want = jax.tree_util.tree_leaves_with_path(to_flax(name, t._state_dict(torch32))['batch_stats'])
        want64 = jax.tree_util.tree_leaves(to_flax(name, t._state_dict(torch64))['batch_stats'])
        ratio, cell = -1.0, None
        for ours, (path, theirs), theirs64 in zip(jax.tree_util.tree_leaves(updates), want, want64):
            bound = max(1e-5, 3 * t._max_rel_err(theirs, theirs64))
            err = t._max_rel_err(ours, theirs)
            if err / bound > ratio:
                ratio, cell = err / bound, (bound, err, jax.tree_util.keystr(path))
        rows.append(
            (
                f'{name} train-mode BN running stats, float32 (worst tensor vs its bound max(1e-5, 3 x timm roundoff))',
                *cell,
            )
        )

        # float64: eval and train logits and updated running stats
        t64 = copy.deepcopy(torch_model).double()
        x = t._images(2, 64, np.float64)
        with jax.enable_x64(True):
            model64 = create_model(name, t.NUM_CLASSES, dtype=jnp.float64)
            v64 = to_flax(name, t._state_dict(t64))
            eval_logits = model64.apply(v64, x, train=False)
            train_logits, upd = model64.apply(v64, x, train=True, mutable=['batch_stats'])
        err = t._max_rel_err(eval_logits, t._torch_forward(t64, x))
        t64.train()
        err = max(err, t._max_rel_err(train_logits, t._torch_forward(t64, x)))
        stats64 = to_flax(name, t._state_dict(t64))['batch_stats']
        err = max(
            [err]
            + [t._max_rel_err(a, b) for a, b in zip(jax.tree_util.tree_leaves(upd), jax.tree_util.tree_leaves(stats64))]
        )
        rows.append((f'{name} float64 eval + train logits and running stats', 1e-10, err, ''))
    return rows


def family_rows():
    """EfficientNet / MobileNetV3 family (test_efficientnet_parity): eval float32, train float64."""
    t = test_efficientnet_parity
    rows = []
    for name in t.FAMILY:
        log(f'  {name}')
        rows.append((f'{name} eval logits, float32, 32 px, random BN (x max|logit|)', 1e-5, t.eval_error(name), ''))
        errors = t.float64_train_errors(name)
        rows.append((f'{name} float64 train-mode logits (x max|logit|)', 1e-10, errors['logits'], ''))
        rows.append((f'{name} float64 train-mode BN running stats (x max|tensor|)', 1e-10, *errors['stats']))
    return rows


# --------------------------------------------------------------------------- optim (test_optim_parity)


def optim_rows():
    t = test_optim_parity
    rows = []
    err_max, where, epoch_mismatch = 0.0, '', 0
    for case in t.SCHEDULE_CASES:
        ours, expected, num_epochs, timm_epochs = t.schedule_vs_timm(case)
        ours = np.asarray(ours)
        epoch_mismatch += num_epochs != timm_epochs
        err = float(np.max(np.abs(ours - expected) / np.abs(expected)))
        if err > err_max:
            err_max, where = err, '-'.join(f'{k}={v}' for k, v in case.items())
    rows.append(
        (
            f'lr schedules vs timm scheduler stepped as train.py, {len(t.SCHEDULE_CASES)} configs, float64 (relative)',
            t.RTOL,
            err_max,
            where,
        )
    )
    rows.append(("lr schedules: num_epochs different from timm's (count)", 0, float(epoch_mismatch), ''))

    worst = {True: (0.0, ''), False: (0.0, '')}
    for name, changes in t.NOISE_CASES.items():
        case = {**t.RECIPE, **changes}
        expected, _ = t.timm_lrs(**case)
        for x64 in (True, False):
            ours, _ = t.our_lrs(case, len(expected), x64=x64)
            worst[x64] = max(worst[x64], (float(np.max(np.abs(ours - expected) / expected)), name))
    for x64, bound in ((True, t.RTOL), (False, 1e-6)):
        rows.append(
            (
                f'step schedule + lr noise (--lr-noise, --seed) vs timm stepped as train.py, '
                f'{len(t.NOISE_CASES)} configs incl. the mobilenetv3_large_100 recipe (600 epochs), '
                f'{"float64" if x64 else "float32"} (relative)',
                bound,
                *worst[x64],
            )
        )

    err_max, where = 0.0, ''
    for opt, lr, extra in t.OPT_CASES:
        err, step = optimizer_error(opt, lr, extra)
        if err > err_max:
            err_max, where = err, f'{opt} {extra or ""} step {step}'.replace('  ', ' ')
    rows.append(
        (
            f'optimizers vs timm create_optimizer_v2 ({", ".join(dict.fromkeys(o for o, _, _ in t.OPT_CASES))}; '
            f'{len(t.OPT_CASES)} configs), 20 '
            'steps + cosine warmup, float64 (|d| / (|timm| + 1e-3), i.e. rtol 1e-12 atol 1e-15)',
            t.RTOL,
            err_max,
            where,
        )
    )

    rng = np.random.default_rng(1)
    logits, labels = rng.normal(scale=3.0, size=(16, 10)), rng.integers(0, 10, size=16)
    err_max = 0.0
    for smoothing in (0.0, 0.1, 0.35):
        timm_loss = LabelSmoothingCrossEntropy(smoothing=smoothing)(
            torch.from_numpy(logits), torch.from_numpy(labels)
        ).item()
        with jax.enable_x64(True):
            ours = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing=smoothing))
        err_max = max(err_max, abs(ours - timm_loss) / abs(timm_loss))
    rows.append(('label-smoothing cross entropy vs timm, smoothing 0 / 0.1 / 0.35, float64', t.RTOL, err_max, ''))
    return rows


def optimizer_error(opt, lr, extra):
    """test_optim_parity's optimizer check as a measurement: (largest error, its step)."""
    err_max, at = 0.0, 0
    for num_updates, our_lr, timm_lr, params, expected in test_optim_parity.optimizer_steps(opt, lr, extra):
        errs = [abs(our_lr - timm_lr) / timm_lr]
        for path, ours in jax.tree_util.tree_leaves_with_path(params):
            theirs = np.asarray(expected[path[0].key][path[1].key])
            errs.append(float(np.max(np.abs(np.asarray(ours) - theirs) / (np.abs(theirs) + 1e-3))))
        if max(errs) > err_max:
            err_max, at = max(errs), num_updates
    return err_max, at


# --------------------------------------------------------------------------- convert, export / import


def convert_rows():
    err = 0.0
    for name in test_convert.MODEL_NAMES:
        state_dict = test_convert._state_dict(name)
        back = to_timm(name, to_flax(name, state_dict))
        assert set(back) == set(state_dict)
        err = max(
            [err] + [float(np.max(np.abs(back[k].astype(np.float64) - v))) for k, v in state_dict.items() if v.size]
        )
    return [
        (
            f'to_timm(to_flax(timm state_dict)) round trip, {", ".join(test_convert.MODEL_NAMES)} (max |diff|)',
            0,
            err,
            '',
        )
    ]


def export_rows():
    t = test_export_import
    model = create_model(t.NAME, t.NUM_CLASSES)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    images = np.random.default_rng(0).normal(size=(4, t.IMG, t.IMG, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    _, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
    variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'ours.safetensors'
        save_timm_safetensors(to_timm(t.NAME, variables), path)
        loaded = timm.create_model(t.NAME, pretrained=False, num_classes=t.NUM_CLASSES, checkpoint_path=str(path))
        err_out = t._max_rel_err(np.asarray(apply(variables, images)), t._timm_logits(loaded, images))
        theirs = t._randomised(1)
        path = Path(tmp) / 'timm.pth.tar'
        torch.save({'state_dict': t._cloned(theirs), 'state_dict_ema': t._cloned(t._randomised(2))}, path)
        ours = np.asarray(apply(to_flax(t.NAME, load_timm_state_dict(path, use_ema=False)), images))
        err_in = t._max_rel_err(ours, t._timm_logits(theirs, images))
    return [
        (
            f'export: our {t.NAME} weights as .safetensors, loaded by timm: eval logits (x max|logit|)',
            t.RTOL,
            err_out,
            '',
        ),
        (
            f'import: timm {t.NAME} .pth.tar read by load_timm_state_dict: eval logits (x max|logit|)',
            t.RTOL,
            err_in,
            '',
        ),
    ]


# --------------------------------------------------------------------------- training trajectories


QUANTITIES = {
    'loss': 'loss every step (relative)',
    'lr': 'lr of every update (relative)',
    'params': 'final params',
    'ema_params': 'final EMA params',
    'stats': 'final BN running stats',
    'ema_stats': 'final EMA BN running stats',
}


def cases_legend() -> str:
    """Markdown list of the trajectory cases (ResNet-18, 32x32, batch 8, 10 classes, label smoothing 0.1)."""
    lines = []
    for name, c in test_trajectory.CASES.items():
        sched = 'per-update' if c.sched_on_updates else 'per-epoch'
        eps = f', eps {c.opt_eps:g}' if c.opt_eps is not None else ''
        model = '' if c.model == test_trajectory.MODEL else f'{c.model}, '
        lines.append(
            f'- `{name}`: {model}{c.dtype}, {c.opt} lr {c.lr:g} weight decay {c.weight_decay:g}{eps}, EMA decay '
            f'{c.ema_decay:g}{" with warmup" if c.ema_warmup else ""}, {sched} cosine ({c.epochs} epochs x '
            f'{c.updates_per_epoch} updates, warmup {c.warmup_epochs} epoch), {c.steps} steps'
        )
    return '\n'.join(lines)


def trajectory_rows():
    rows = []
    for name, case in test_trajectory.CASES.items():
        log(f'  trajectory {name}')
        per_tensor = case.dtype == 'float64' if case.per_tensor is None else case.per_tensor
        scale = 'x max|tensor|' if per_tensor else 'x max|group|'
        for q, (err, where, bound) in test_trajectory.measure(name).items():
            what = QUANTITIES[q] + ('' if q in ('loss', 'lr') else f' ({scale})')
            rows.append((f'train_step trajectory `{name}`: {what}', bound, err, where))
    return rows


def calibration_rows():
    t = test_trajectory
    rows = []
    log('  timm roundoff floor adamw_f64')
    floor = t.timm_roundoff_floor('adamw_f64')
    rows.append(
        (
            '(timm vs timm) `adamw_f64` run, model in channels_last vs not: final params (x max|tensor|)',
            '-',
            *floor['params'],
        )
    )
    for label, name, changes in (
        ('`sgd_f32`', 'sgd_f32', {}),
        ('`adamw_f32` (eps 1e-4, 5 steps)', 'adamw_f32', {}),
        ('AdamW default eps, 1 step', 'adamw_f32', dict(opt_eps=None, steps=1)),
        ('AdamW default eps, 20 steps', 'adamw_f32', dict(opt_eps=None, steps=20)),
        ('AdamW eps 1e-4, 20 steps', 'adamw_f32', dict(steps=20)),
    ):
        log(f'  timm float32 gap: {label}')
        gap = t.timm_float32_gap(name, **changes)
        rows.append((f'(timm vs timm) float32 vs float64, {label}: final params (x max|group|)', '-', *gap['params']))
    return rows


# --------------------------------------------------------------------------- table


def table(rows) -> str:
    lines = ['| what is compared | bound | largest error measured |', '|---|---|---|']
    for what, bound, err, where in rows:
        flag = '' if bound == '-' or err <= bound else ' **FAIL**'
        cells = (what, fmt(bound), f'{fmt(err)}{f" ({where})" if where else ""}{flag}')
        lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
    return '\n'.join(lines)


def readme(text: str, seconds: float) -> str:
    return f"""# Parity tests

jax_ema against timm's own code (timm {timm.__version__}, torch {torch.__version__}, jax {jax.__version__}):
EMA math, lr schedules, optimizers, loss, forward passes, weight conversion, export/import, and whole
training trajectories of our jitted `train_step` against timm's train.py loop (`torch_ref/trainer.py`).
float64 runs prove the semantics (only summation order differs); float32 runs bound the float32 error.
Both sides compute at one pinned float32 precision, torch on the GPU when there is one
(`torch_ref/precision.py`, docs/gpu.md).
Rows "(timm vs timm)" are calibration: how far timm is from itself.

Trajectory cases (ResNet-18 unless another model is named, from timm's init, 32x32 random images, batch 8, 10 classes,
label smoothing 0.1):

{cases_legend()}

Regenerate this page (about {seconds / 60:.0f} minutes on a {platform.machine()} machine with {os.cpu_count()} CPUs):
`python -m parity_tests.report --readme`. The tests themselves: `python -m pytest parity_tests -q`.

{text}
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m parity_tests.report', description=__doc__.splitlines()[0])
    parser.add_argument('--readme', action='store_true', help=f'also write the table into {README}')
    args = parser.parse_args(argv)
    precision.pin()  # as the tests run: one float32 precision on both sides (torch_ref/precision.py)
    start, rows = time.time(), []
    for section in (
        ema_rows,
        forward_rows,
        family_rows,
        optim_rows,
        convert_rows,
        export_rows,
        trajectory_rows,
        calibration_rows,
    ):
        log(f'{section.__name__} ({time.time() - start:.0f}s)')
        rows += section()
    text = table(rows)
    print(cases_legend() + '\n\n' + text)
    log(f'done in {time.time() - start:.0f}s')
    if args.readme:
        README.write_text(readme(text, time.time() - start))
    failed = any(b != '-' and e > b for _, b, e, _ in rows)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
