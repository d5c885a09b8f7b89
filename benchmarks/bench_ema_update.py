"""bench_ema.py's part 1: the EMA update alone, ours vs timm's ModelEmaV2 / ModelEmaV3 vs a jitted copy."""

import jax
import jax.numpy as jnp
import torch
from bench_timing import interleave, medians, timed_jax, timed_torch
from timm.utils import ModelEmaV2, ModelEmaV3

from jax_ema import ema, offload
from torch_ref import trainer as torch_trainer


def bench_update(variables, model_name, decay, reps, rounds):
    """Ours vs timm's V2/V3 update vs a jitted copy, on one model's params + BatchNorm statistics."""
    cfg = ema.EmaConfig(decay=decay)
    params, stats = variables['params'], variables.get('batch_stats', {})
    update = offload.ema_update(cfg, 'device')  # the trainer's jitted, donated update of the flat EMA
    step = jnp.asarray(10, jnp.int32)
    ema_pair = (ema.init(params), ema.init(stats))
    n = ema_pair[0].flat.size + ema_pair[1].flat.size
    flat_new = jnp.concatenate([ema_pair[0].flat, ema_pair[1].flat]) + 1.0
    lerp = jax.jit(ema.lerp, donate_argnums=0)
    size = jnp.float32(1 - decay)
    # The streaming reference: one pass reading and writing the n floats in place (donated, as our update
    # is, so neither pays for fresh pages); a negation, which XLA cannot simplify away as it would x + 0.
    copy = jax.jit(jnp.negative, donate_argnums=0)
    flat = jnp.array(flat_new, copy=True)

    device = 'cuda' if jax.default_backend() == 'gpu' and torch.cuda.is_available() else 'cpu'
    tmodel = torch_trainer.create_model(model_name, 1000).to(device)
    n_torch = sum(v.numel() for v in tmodel.state_dict().values() if v.is_floating_point())
    v2, v3 = ModelEmaV2(tmodel, decay=decay), ModelEmaV3(tmodel, decay=decay)
    fns = {
        'ours': timed_jax(lambda p: update(*p, params, stats, step, 1), ema_pair, reps),
        'ours_flat_lerp': timed_jax(lambda e: lerp(e, flat_new, size), flat, reps),
        'timm_v2': timed_torch(lambda k: v2.update(tmodel), reps, device),
        'timm_v3': timed_torch(lambda k: v3.update(tmodel, step=k), reps, device),
        'copy': timed_jax(copy, jnp.array(flat_new, copy=True), reps),
    }
    times = interleave(fns, rounds)
    med = medians(times)
    moved = {name: (8 if name == 'copy' else 12) * n for name in fns}
    gb_s = {name: moved[name] / med[name] / 1e9 for name in fns}
    return dict(
        model=model_name,
        n_floats=int(n),
        n_floats_timm=int(n_torch),
        torch_device=device,
        bytes_moved=moved,
        median_s=med,
        gb_per_s=gb_s,
        ratio_to_timm_v3={name: med[name] / med['timm_v3'] for name in fns if name != 'copy'},
        fraction_of_copy_bandwidth={name: gb_s[name] / gb_s['copy'] for name in fns if name != 'copy'},
        samples=times,
    )
