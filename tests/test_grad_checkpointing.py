"""--grad-checkpointing (timm's set_grad_checkpointing): each block under nn.remat. One tiny model per family,
one real train step (drops on, BatchNorm in train mode, EMA) with and without it: the same numbers (bit for bit,
or float32 rounding: BOUNDS), and a compiled step that plans fewer temporary bytes because it recomputes the
blocks' convolutions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_ema import ema, offload
from jax_ema.models import create_model, step_compiler_options
from jax_ema.step import create_train_state, train_step

# A tiny model of each family (fields of the Flax modules, as --model-kwargs would set them), every random
# layer of the family switched on, so that the rngs and the mutable batch_stats pass through nn.remat.
DROPS = dict(drop_rate=0.2, drop_path_rate=0.2)
FAMILIES = {
    'resnet18': dict(DROPS, drop_block_rate=0.1, layers=(1, 1, 1, 1)),
    'efficientnet_b0': dict(DROPS, arch=(('ds_r1_k3_s1_e1_c16_se0.25',), ('ir_r2_k3_s2_e6_c24_se0.25',))),
    'mobilenetv3_small_100': dict(
        DROPS, arch=(('ds_r1_k3_s2_e1_c16_se0.25_nre',), ('ir_r2_k5_s1_e6_c16_se0.25',), ('cn_r1_k1_s1_c96',))
    ),
}
EMA = ema.EmaConfig(decay=0.9)


def _batch(n=8):
    rng = np.random.default_rng(0)
    return dict(
        image=jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8), label=jnp.arange(n, dtype=jnp.int32) % 5
    )


@functools.cache
def _stepped(name: str, remat: bool):
    """(compiled step, its lowered StableHLO text, the state after one step, the step's metrics), as the trainer
    builds the step (offload.build_step with the model's compiler options)."""
    kwargs = dict(FAMILIES[name], grad_checkpointing=remat)
    model = create_model(name, 5, **kwargs)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    state = create_train_state(model, optax.sgd(0.1, momentum=0.9), variables, EMA)
    built = offload.build_step(
        functools.partial(train_step, smoothing=0.1), EMA, 'device', compiler_options=step_compiler_options(kwargs)
    )
    lowered = built.train_step_fn.lower(state, _batch())
    compiled = lowered.compile()
    new_state, metrics = compiled(state, _batch())
    return compiled, lowered.as_text(), new_state, metrics


# How close the step with remat is to the one without, in units of float32's eps times the largest value of
# the quantity (None: bit for bit). The ResNet and the EfficientNet recompute every block exactly; MobileNetV3's
# recomputed blocks (hard-swish, hard-sigmoid gates) are fused differently, and its gradient sums round apart by
# up to 2.7 eps of the largest gradient (measured), its updated weights by at most one rounding.
BOUNDS = {
    'resnet18': {},
    'efficientnet_b0': {},
    'mobilenetv3_small_100': dict(opt_state=4, params=1, ema_params=1),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILIES)
def test_the_step_gives_the_same_numbers(name):
    _, _, plain, plain_metrics = _stepped(name, False)
    _, _, remat, remat_metrics = _stepped(name, True)
    assert float(remat_metrics['loss']) == float(plain_metrics['loss'])
    # sgd's momentum trace after the first update is the gradient itself
    for what in ('opt_state', 'params', 'batch_stats', 'ema_params', 'ema_batch_stats'):
        got, want = jax.tree.leaves(getattr(remat, what)), jax.tree.leaves(getattr(plain, what))
        assert len(got) == len(want)
        bound = BOUNDS[name].get(what)
        scale = max(float(np.max(np.abs(leaf))) for leaf in want)
        for a, b in zip(got, want):
            if bound is None:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f'{name} {what}')
            else:
                atol = bound * float(np.finfo(np.float32).eps) * scale
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol, err_msg=f'{name} {what}')
    moved = [np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(plain.batch_stats)]  # means start at 0
    assert any(moved)  # the step updated the statistics: the comparison of batch_stats means something


def _convolutions(text: str) -> int:
    return text.count('convolution(') + text.count('stablehlo.convolution')


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILIES)
def test_the_step_recomputes_the_blocks_and_plans_less_memory(name):
    plain, plain_hlo, _, _ = _stepped(name, False)
    remat, remat_hlo, _, _ = _stepped(name, True)
    # What the compiler gets: the blocks' forward convolutions once more, behind optimization barriers that keep
    # XLA from merging them back (GPU and TPU keep the barriers until after scheduling; on the CPU the
    # step's compiler options keep them).
    assert _convolutions(remat_hlo) > _convolutions(plain_hlo) and 'optimization_barrier' in remat_hlo
    assert 'optimization_barrier' not in plain_hlo
    # What it compiled: the recomputation survived, and fewer bytes of activations are kept for the backward.
    assert _convolutions(remat.as_text()) > _convolutions(plain.as_text())
    assert remat.memory_analysis().temp_size_in_bytes < plain.memory_analysis().temp_size_in_bytes


def test_the_option_is_a_model_field_of_every_family_and_a_flag():
    from jax_ema.config import parse_args
    from jax_ema.models import MODEL_NAMES, model_kwargs

    for name in MODEL_NAMES:
        assert create_model(name, 3, grad_checkpointing=True).grad_checkpointing
    assert model_kwargs(parse_args(['--grad-checkpointing'])) == dict(grad_checkpointing=True)
    assert model_kwargs(parse_args([])) == {}
    assert step_compiler_options({}) is None and step_compiler_options(dict(grad_checkpointing=False)) is None
