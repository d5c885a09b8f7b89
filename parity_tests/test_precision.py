"""The precision pins (torch_ref/precision.py) are in force for every parity test, and they reach the code.

On the CPU the pins change no number (XLA:CPU and torch's CPU kernels compute float32 exactly), so what is
proven here is that they are set, checked for every parity test, and carried into the compiled programs:
on a GPU the same compiled programs then run without TF32.
"""

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import torch

from jax_ema import ema, optim
from jax_ema.models import create_model
from jax_ema.train import create_train_state, train_step
from torch_ref import precision

HERE = Path(__file__).parent
PRECISION = re.compile(r'precision_config = \[([^\]]*)\]')


def test_every_parity_test_is_pinned_at_its_call(request):
    """Every parity test of this session carries the check; each that ran so far (this one included) was
    pinned at its call, as the conftest hook recorded."""
    items = [item for item in request.session.items if Path(item.path).parent == HERE]
    assert request.node in items
    assert all('pinned_precision' in item.fixturenames for item in items)
    recorded = {item.nodeid: dict(item.user_properties).get('precision') for item in items}
    ran = {nodeid: state for nodeid, state in recorded.items() if state is not None}
    assert request.node.nodeid in ran
    unpinned = {nodeid: precision.problems(state) for nodeid, state in ran.items() if precision.problems(state)}
    assert not unpinned


def _precisions(lowered) -> list[str]:
    return PRECISION.findall(lowered.as_text())


def test_our_compiled_forward_and_train_step_run_at_highest_precision():
    """Every conv and dot of the model's forward and of the jitted train step (backward and EMA included)
    is compiled at HIGHEST under the pins; at JAX's default precision the same programs say DEFAULT."""
    model = create_model('resnet18', 3)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)
    cfg = ema.EmaConfig(decay=0.9)
    tx = optim.create_optimizer('sgd', lambda step: 0.1, 1e-4, 0.9)
    state = jax.eval_shape(lambda v: create_train_state(model, tx, v, cfg), variables)
    batch = {'image': x, 'label': jax.ShapeDtypeStruct((2,), jnp.int32)}
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    step = jax.jit(functools.partial(train_step, ema_cfg=cfg, smoothing=0.1), donate_argnums=0)

    pinned = _precisions(forward.lower(variables, x)) + _precisions(step.lower(state, batch))
    assert len(pinned) > 60  # 20 convs + the classifier forward; their backward passes
    assert set(pinned) == {'#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>'}
    with jax.default_matmul_precision('default'):
        unpinned = set(_precisions(forward.lower(variables, x)) + _precisions(step.lower(state, batch)))
    assert unpinned == {'#stablehlo<precision DEFAULT>, #stablehlo<precision DEFAULT>'}


@pytest.mark.parametrize('setting', ['jax', 'cuda_matmul', 'cudnn', 'float32_matmul', 'cudnn_benchmark'])
def test_each_setting_left_unpinned_is_named(setting):
    """Any one switch flipped back to a GPU's fast default is caught by `check`, and named."""
    restore = precision.pin()
    try:
        if setting == 'jax':
            jax.config.update('jax_default_matmul_precision', 'default')
        elif setting == 'cuda_matmul':
            torch.backends.cuda.matmul.allow_tf32 = True
        elif setting == 'cudnn':
            torch.backends.cudnn.allow_tf32 = True
        elif setting == 'float32_matmul':
            torch.set_float32_matmul_precision('high')
        else:
            torch.backends.cudnn.benchmark = True
        wrong = precision.problems()
        with pytest.raises(AssertionError, match='precision not pinned'):
            precision.check()
    finally:
        restore()
        precision.pin()  # as the session's pins left them
    words = {
        'jax': 'jax_default_matmul_precision',
        'cuda_matmul': 'cuda_matmul_allow_tf32',
        'cudnn': 'cudnn_allow_tf32',
        'float32_matmul': 'float32 matmul precision',
        'cudnn_benchmark': 'cuDNN',
    }
    assert any(words[setting] in w for w in wrong), wrong  # torch links its matmul switches: one may flip others


def test_a_parity_test_that_runs_unpinned_fails(pytester, monkeypatch):
    """The conftest's hook and fixture fail a test whose precision is unpinned at its call or at its end; a
    float64 test is skipped, with the reason, where float64 is missing."""
    monkeypatch.setattr(precision, 'float64_missing', lambda: 'float64 bound cannot hold here: made up')
    pytester.makeconftest('from parity_tests.conftest import *  # noqa: F401,F403')
    pytester.makepyfile(
        test_cases="""
        import pytest
        import torch

        @pytest.fixture
        def tf32_on():
            torch.backends.cudnn.allow_tf32 = True
            yield
            torch.backends.cudnn.allow_tf32 = False

        def test_pinned():
            pass

        def test_unpinned_at_call(tf32_on):
            pass

        def test_unpins_itself():
            torch.backends.cuda.matmul.allow_tf32 = True

        @pytest.fixture
        def costly():
            raise RuntimeError('a skipped float64 test set up its fixtures')

        @pytest.mark.float64
        def test_in_float64(costly):
            pass
    """
    )
    try:
        result = pytester.runpytest_inprocess('-p', 'no:cacheprovider', '-ra')
    finally:
        precision.pin()
    result.assert_outcomes(passed=2, failed=1, errors=1, skipped=1)  # the teardown error's test itself passed
    result.stdout.fnmatch_lines(
        [
            '*ERROR at teardown of test_unpins_itself*',
            'SKIPPED * float64 bound cannot hold here: made up',
            'FAILED test_cases.py::test_unpinned_at_call - AssertionError: precision not p*',
        ]
    )


def test_float64_is_measured_where_it_runs():
    """float64_missing measures both sides; on this machine's backends it finds what they do."""
    reason = precision.float64_missing()
    if jax.default_backend() in ('cpu', 'gpu') and precision.torch_device().type in ('cpu', 'cuda'):
        assert reason is None
    else:
        assert reason is None or reason.startswith('float64 bound cannot hold here')
