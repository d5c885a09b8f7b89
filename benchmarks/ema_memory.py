"""Where the EMA lives, in bytes: on every device, in host memory, or sharded 1/N over the devices.

    python benchmarks/ema_memory.py [--model resnet50] [--devices 8] [--num-classes 1000]

Runs on N fake CPU devices (XLA_FLAGS is set here, before JAX starts). For each placement
(offload.PLACEMENTS) it measures the EMA's bytes held by one device and by the host (the live buffers'
addressable shards), and XLA's plan for one donated train step (`memory_analysis()`: the arguments,
i.e. the state, per device, and the temporaries). Prints JSON and writes benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='resnet50')
    p.add_argument('--devices', type=int, default=8)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--out', default=None)
    args = p.parse_args(argv)
    os.environ['XLA_FLAGS'] = (
        f'--xla_force_host_platform_device_count={args.devices} --xla_cpu_collective_call_terminate_timeout_seconds=600'
    )
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jax_ema import ema, offload, optim, parallel
    from jax_ema.models import create_model
    from jax_ema.train import create_train_state, train_step

    model = create_model(args.model, args.num_classes)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, args.img_size, args.img_size, 3)), train=False)
    tx = optim.create_optimizer('sgd', lambda step: 0.1, 1e-4, 0.9)
    cfg = ema.EmaConfig(decay=0.9998)
    rng = np.random.default_rng(0)
    batch = parallel.shard_batch(
        {
            'image': rng.normal(size=(args.devices, args.img_size, args.img_size, 3)).astype(np.float32),
            'label': rng.integers(0, args.num_classes, size=args.devices).astype(np.int32),
        }
    )
    device0 = jax.devices()[0]

    def bytes_on(tree, where):
        """Bytes of `tree`'s buffers on device 0 (where='device') or in host memory (all its copies)."""
        total = 0
        for leaf in jax.tree.leaves(tree):
            for shard in leaf.addressable_shards:
                kind = leaf.sharding.memory_kind
                if where == 'device' and kind == 'device' and shard.device == device0:
                    total += shard.data.nbytes
                elif where == 'host' and kind == 'pinned_host':
                    total += shard.data.nbytes
        return total

    results = {
        'model': args.model,
        'num_classes': args.num_classes,
        'devices': args.devices,
        'jax': jax.__version__,
        'placements': {},
    }
    for where in offload.PLACEMENTS:
        state = create_train_state(model, tx, variables, cfg)
        ema_vars = (state.ema_params, state.ema_batch_stats)
        results['ema_bytes'] = sum(t.flat.nbytes for t in ema_vars)
        results['params_bytes'] = sum(x.nbytes for x in jax.tree.leaves(state.params))
        state = offload.place_state(state, where)
        # what the trainer compiles for each placement (EMA every update): the host EMA's device step runs
        # without it (host_ema.HostStep averages it on the host)
        plan = jax.jit(
            functools.partial(
                train_step,
                ema_cfg=None if where == 'host' else cfg,
                smoothing=0.1,
                ema_update=offload.sharded_update if where == 'sharded' else ema.update,
            ),
            donate_argnums=0,
        )
        arg = state.replace(ema_params=None, ema_batch_stats=None) if where == 'host' else state
        plan = plan.lower(arg, batch).compile().memory_analysis()
        ema_tree = (state.ema_params, state.ema_batch_stats)
        results['placements'][where] = {
            'ema_bytes_per_device': bytes_on(ema_tree, 'device'),
            'ema_bytes_in_host_memory': bytes_on(ema_tree, 'host'),
            'step_state_bytes_per_device': plan.argument_size_in_bytes,
            'step_temp_bytes_per_device': plan.temp_size_in_bytes,
        }
        print(where, results['placements'][where], file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    out = Path(args.out or Path(__file__).parent / 'results' / f'ema_memory_cpu{args.devices}_{args.model}.json')
    out.write_text(text + '\n')


if __name__ == '__main__':
    main()
