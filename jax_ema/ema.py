"""Exponential moving average of weights, as timm's `ModelEmaV3`, for pytrees.

    ema <- decay * ema + (1 - decay) * new  =  ema + (1 - decay) * (new - ema)

The decay follows `ModelEmaV3.get_decay(step)`, where `step` counts optimizer updates
(the first update is step 1):

    t = max(0, step - update_after_step - 1)
    t == 0                  -> decay 0: the EMA becomes a plain copy of the weights
    use_warmup              -> decay = clip(1 - (1 + t / warmup_gamma) ** -warmup_power, min_decay, decay)
    otherwise               -> decay

We never form `1 - decay` from a float32 decay near 1 (cancellation costs ~1e-4 relative at
0.9998): the step size `1 - decay` is computed directly — `(1 + t/gamma) ** -power` for the
warmup, host float64 constants `1 - decay` / `1 - min_decay` otherwise — and then cast.
The EMA is kept in float32 (or float64 under x64) whatever dtype the model computes in.

Several EMAs at once (`EmaConfig(decay, extra_decays=(...), stds=(...))`): the members are stacked,
the timm-schedule ones (`decays`) first, then the power-function ones (`stds`, see power_ema.py), and
held as one FlatTree whose buffer is [members, n]; one fused lerp with a [members, 1] column of step
sizes updates them all. Each member's numbers are bit-identical to a separate EMA's. A single EMA
keeps the plain [n] buffer. `tree(ema, i)` is member i as the usual pytree.

Why not `optax.incremental_update(new, ema, w)`: it computes `w * new + (1 - w) * ema`, re-forming
`1 - w` in float32. At w = 2e-4 that rounds up by 2.6e-8 per update, which compounds into a +1.3e-4
relative bias of the EMA (its weights sum to more than 1); tests/test_ema.py measures it. We write the
same average as torch's `lerp` (timm's update), which only ever multiplies by `w` or by `1 - w`
where it is exact, so it matches timm bit for bit in float32 and float64 and a step size of 1 copies.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jax_ema import power_ema

DEFAULT_DECAY = 0.9998  # timm train.py's --model-ema-decay


@dataclasses.dataclass(frozen=True)
class EmaConfig:
    """timm's ModelEmaV3 settings (same names, same defaults, decay as train.py's DEFAULT_DECAY)."""

    decay: float = DEFAULT_DECAY
    min_decay: float = 0.0
    update_after_step: int = 0
    use_warmup: bool = False
    warmup_gamma: float = 1.0
    warmup_power: float = 2 / 3
    exclude_buffers: bool = False  # copy BatchNorm statistics instead of averaging them
    update_every: int = 1  # one update every K optimizer updates, folding K with decay**K
    extra_decays: tuple = ()  # more timm-schedule EMAs, stacked after `decay`
    stds: tuple = ()  # power-function EMAs (EDM2) of these sigma_rel, stacked after the decays

    def __post_init__(self):
        object.__setattr__(self, 'extra_decays', tuple(float(d) for d in self.extra_decays))
        object.__setattr__(self, 'stds', tuple(float(s) for s in self.stds))
        for std in self.stds:
            power_ema.gamma_from_std(std)  # UserError outside (0, MAX_STD]
        if len(set(self.stds)) < len(self.stds):
            from jax_ema.errors import UserError

            raise UserError(f'EMA sigma_rel values {list(self.stds)} repeat; give each one once')
        for value in self.extra_decays:
            if not 0.0 <= value <= 1.0:
                from jax_ema.errors import UserError

                raise UserError(f'EMA decay {value} is outside [0, 1]; use a value like {DEFAULT_DECAY}')
        if int(self.update_every) < 1:
            from jax_ema.errors import UserError

            raise UserError(f'EMA update-every must be >= 1, got {self.update_every}')
        for name in ('decay', 'min_decay'):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                from jax_ema.errors import UserError

                raise UserError(
                    f'EMA {name.replace("_", "-")} {value} is outside [0, 1]; '
                    f'use a value like {DEFAULT_DECAY} (the horizon is 1/(1-decay) updates)'
                )

    @property
    def horizon(self) -> float:
        """Number of updates the average effectively spans, 1 / (1 - decay)."""
        return float('inf') if self.decay == 1.0 else 1.0 / (1.0 - self.decay)

    @property
    def decays(self) -> tuple:
        """The timm-schedule members' decays, first `decay` (the single-EMA one)."""
        return (self.decay, *self.extra_decays)

    @property
    def members(self) -> int:
        """How many EMAs are kept: 1 is the plain single EMA, more are stacked."""
        return len(self.decays) + len(self.stds)

    @property
    def power_rows(self) -> slice:
        """The stack rows holding the power-function EMAs (in `stds` order)."""
        return slice(len(self.decays), self.members)

    def single(self, decay: float) -> EmaConfig:
        """This config with one timm-schedule member of `decay` (what a separate EMA would use)."""
        return dataclasses.replace(self, decay=decay, extra_decays=(), stds=())


def ema_dtype():
    """float32, or float64 when x64 is enabled (parity tests)."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def step_size(cfg: EmaConfig, step, gap=1) -> jax.Array:
    """`1 - decay(step) ** gap` as a jit-friendly scalar (or array, for an array of steps).

    `step` is the optimizer update count; `gap` the number of updates this EMA update folds in
    (1 normally, K with update-every-K, fewer for a flush before evaluation). For gap > 1 the step
    size is `-expm1(gap * log1p(-s))`, exact where `1 - (1 - s) ** gap` would cancel.
    """
    dtype = ema_dtype()
    t = jnp.maximum(jnp.asarray(step) - cfg.update_after_step - 1, 0).astype(dtype)
    if cfg.use_warmup:
        warm = (1.0 + t / cfg.warmup_gamma) ** (-cfg.warmup_power)
        size = jnp.clip(warm, 1.0 - cfg.decay, 1.0 - cfg.min_decay)  # host float64 constants
    else:
        size = jnp.full(jnp.shape(t), 1.0 - cfg.decay, dtype)
    size = jnp.where(t > 0, size, jnp.ones((), dtype))
    if isinstance(gap, int) and gap == 1:
        return size
    gap = jnp.asarray(gap)
    folded = -jnp.expm1(gap.astype(dtype) * jnp.log1p(-size))
    return jnp.where(gap == 1, size, jnp.where(gap > 0, folded, jnp.zeros((), dtype)))  # gap 1: exactly s


def step_sizes(cfg: EmaConfig, step, gap=1) -> jax.Array:
    """The step size of every member: `step_size` for one EMA, else a [members] vector — each decay's
    `step_size`, then each std's power-function `1 - beta` with the exact gap (power_ema.step_size)."""
    if cfg.members == 1:
        return step_size(cfg, step, gap)
    sizes = [step_size(cfg.single(d), step, gap) for d in cfg.decays]
    sizes += [power_ema.step_size(power_ema.gamma_from_std(s), step, gap, ema_dtype()) for s in cfg.stds]
    return jnp.stack(jnp.broadcast_arrays(*sizes))


@jax.tree_util.register_pytree_node_class
class FlatTree:
    """A pytree held as ONE float vector (its float leaves raveled and concatenated) + its other leaves.

    The EMA is kept this way: one buffer instead of hundreds is one argument to dispatch and one fused
    update per step, so the EMA adds no host dispatch cost to the step (measured in docs/, performance).
    A stack of EMAs is a [members, n] buffer (the flat axis stays last) sharing the non-float leaves.
    `tree()` gives the usual pytree back (float leaves in the EMA dtype).
    """

    def __init__(self, flat, others, spec):
        self.flat, self.others, self.spec = flat, tuple(others), spec

    def tree_flatten(self):
        return (self.flat, *self.others), self.spec

    @classmethod
    def tree_unflatten(cls, spec, children):
        return cls(children[0], children[1:], spec)

    @classmethod
    def of(cls, tree, dtype, stacked: bool = False):
        """`tree` held flat; `stacked`: its float leaves carry a leading member axis (what `tree()`
        gives for a stack, and checkpoints store), its other leaves do not."""
        leaves, treedef = jax.tree.flatten(tree)
        is_float = tuple(bool(jnp.issubdtype(jnp.result_type(x), jnp.floating)) for x in leaves)
        skip = 1 if stacked else 0
        spec = (treedef, is_float, tuple(tuple(jnp.shape(x))[skip * f :] for x, f in zip(leaves, is_float)))
        others = [jnp.array(x, copy=True) for x, f in zip(leaves, is_float) if not f]
        return cls(jnp.array(_ravel(leaves, is_float, dtype, stacked), copy=True), others, spec)

    @property
    def members(self) -> int:
        """1 for a single EMA ([n] buffer), else the stack height ([members, n] buffer)."""
        return self.flat.shape[0] if self.flat.ndim == 2 else 1

    def pack(self, tree):
        """The float leaves of `tree` (same structure as ours) as one vector of our dtype and length; a
        FlatTree of our structure (new weights packed already, as the host EMA gets them) as it is."""
        if isinstance(tree, FlatTree) and tree.spec == self.spec:
            return tree.flat, list(tree.others)
        leaves, treedef = jax.tree.flatten(tree)
        if treedef != self.spec[0]:
            raise ValueError(f"tree structure {treedef} does not match the EMA's {self.spec[0]}")
        flat = _ravel(leaves, self.spec[1], self.flat.dtype)
        if self.flat.shape[-1] > flat.shape[0]:  # a padded EMA (see `padded`)
            flat = jnp.pad(flat, (0, self.flat.shape[-1] - flat.shape[0]))
        return flat, [x for x, f in zip(leaves, self.spec[1]) if not f]

    def padded(self, multiple: int) -> FlatTree:
        """Zeros appended to the flat vector's last axis up to a multiple of `multiple` (to shard it evenly
        over devices); `tree()` ignores them and `pack` pads to match, so they stay zero."""
        pad = -self.flat.shape[-1] % multiple
        if pad == 0:
            return self
        return FlatTree(jnp.pad(self.flat, [(0, 0)] * (self.flat.ndim - 1) + [(0, pad)]), self.others, self.spec)

    def tree(self, index: int | None = None):
        """The pytree; for a stack, member `index`, or all with a leading member axis when None."""
        flat = self.flat
        if flat.ndim == 2 and index is not None:
            flat = flat[index]
        elif flat.ndim == 1 and index not in (None, 0):
            raise IndexError(f'a single EMA has no member {index}')
        lead = flat.shape[:-1]
        treedef, is_float, shapes = self.spec
        leaves, others, offset = [], iter(self.others), 0
        for f, shape in zip(is_float, shapes):
            if f:
                size = math.prod(shape)
                leaves.append(flat[..., offset : offset + size].reshape(lead + shape))
                offset += size
            else:
                leaves.append(next(others))
        return jax.tree.unflatten(treedef, leaves)


def _ravel(leaves, is_float, dtype, stacked=False):
    parts = [
        jnp.reshape(x, (jnp.shape(x)[0], -1) if stacked else (-1,)).astype(dtype) for x, f in zip(leaves, is_float) if f
    ]
    return jnp.concatenate(parts, axis=-1) if parts else jnp.zeros((0,), dtype)


def init(tree, members: int = 1) -> FlatTree:
    """A float EMA copy of `tree`: a real copy (never aliasing the weights), float leaves in fp32;
    with `members` > 1 a stack of that many identical copies ([members, n])."""
    flat = FlatTree.of(tree, ema_dtype())
    if members == 1:
        return flat
    return FlatTree(jnp.tile(flat.flat[None], (members, 1)), flat.others, flat.spec)


def init_stacked(stacked_tree) -> FlatTree:
    """A stack from a pytree whose float leaves carry a leading member axis (as checkpoints store it)."""
    return FlatTree.of(stacked_tree, ema_dtype(), stacked=True)


def tree(ema_tree, index: int | None = None):
    """The EMA as the usual pytree (a FlatTree unpacked; a plain tree as it is). For a stack: member
    `index`, or every member with a leading member axis when `index` is None (a plain tree given with
    an `index` is taken as a stack: its float leaves are indexed)."""
    if isinstance(ema_tree, FlatTree):
        return ema_tree.tree(index)
    return (
        ema_tree
        if index is None
        else jax.tree.map(
            lambda x: x[index] if jnp.issubdtype(x.dtype, jnp.floating) and jnp.ndim(x) > 0 else x, ema_tree
        )
    )


def lerp(old, new, weight):
    """old + weight * (new - old), rounded as torch.lerp (exact copy at weight 1)."""
    delta = new - old
    return jnp.where(weight < 0.5, old + weight * delta, new - delta * (1 - weight))


def _column(size, ndim):
    """A [members] step-size vector shaped to broadcast over [members, ...] (a scalar as it is)."""
    return jnp.reshape(size, jnp.shape(size) + (1,) * (ndim - 1)) if jnp.ndim(size) == 1 else size


def average(ema_tree, new_tree, size):
    """ema <- ema + size * (new - ema) for float leaves; other leaves are copied. `size` is a scalar,
    or a [members] vector for a stack (float leaves with a leading member axis)."""
    if isinstance(ema_tree, FlatTree):
        new, others = ema_tree.pack(new_tree)
        flat = lerp(ema_tree.flat, new, _column(size, ema_tree.flat.ndim).astype(ema_tree.flat.dtype))
        return FlatTree(flat, [jnp.asarray(n, o.dtype) for n, o in zip(others, ema_tree.others)], ema_tree.spec)

    def leaf(new, old):
        if not jnp.issubdtype(old.dtype, jnp.floating):
            return jnp.asarray(new, old.dtype)
        return lerp(old, new.astype(old.dtype), _column(size, old.ndim).astype(old.dtype))

    return jax.tree.map(leaf, new_tree, ema_tree)


def copy_into(ema_tree, new_tree):
    """The EMA tree set to `new_tree`, in the EMA's dtypes (timm's exclude_buffers for statistics);
    every member of a stack gets the copy."""
    if isinstance(ema_tree, FlatTree):
        new, others = ema_tree.pack(new_tree)
        return FlatTree(
            jnp.broadcast_to(new, ema_tree.flat.shape),
            [jnp.asarray(n, o.dtype) for n, o in zip(others, ema_tree.others)],
            ema_tree.spec,
        )
    return jax.tree.map(lambda new, old: jnp.broadcast_to(jnp.asarray(new, old.dtype), old.shape), new_tree, ema_tree)


def update(cfg: EmaConfig, ema_params, ema_stats, params, stats, step, gap=1):
    """One EMA update after optimizer update number `step`, folding in `gap` updates (see step_size);
    returns (ema_params, ema_stats). A gap of 0 leaves the EMA as it is. With several members
    (`cfg.members` > 1) the EMA is a stack and every member is updated in the same fused lerp."""
    size = step_sizes(cfg, step, gap)
    ema_params = average(ema_params, params, size)
    ema_stats = copy_into(ema_stats, stats) if cfg.exclude_buffers else average(ema_stats, stats, size)
    return ema_params, ema_stats


def member(ema_tree, index: int):
    """Member `index` of a stacked FlatTree, still flat ([n] buffer: one shape whatever the index, so a
    jitted evaluation compiles once for all members); a single EMA is returned as it is (index 0)."""
    if isinstance(ema_tree, FlatTree) and ema_tree.flat.ndim == 2:
        return FlatTree(ema_tree.flat[index], ema_tree.others, ema_tree.spec)
    if index != 0:
        raise IndexError(f'a single EMA has no member {index}')
    return ema_tree


def member_names(cfg: EmaConfig) -> list[str]:
    """'decay 0.9998', ..., 'std 0.05', ...: what each member of the stack is, in stack order."""
    return [f'decay {d:g}' for d in cfg.decays] + [f'std {s:g}' for s in cfg.stds]
