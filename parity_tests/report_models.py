"""The parity report's rows of models: forward passes (test_forward, test_efficientnet_parity), weight
conversion (test_convert) and export / import (test_export_import), each measured as the tests assert it."""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the test modules import each other as pytest does

from jax_ema.convert import to_flax, to_timm  # noqa: E402
from jax_ema.models import create_model
from jax_ema.timm_io import load_timm_state_dict, save_timm_safetensors
from parity_tests import test_convert, test_efficientnet_parity, test_export_import, test_forward
from parity_tests.report_format import log

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
