"""Post-hoc EMA (EDM2): any sigma_rel after training, from snapshots of the power-function EMAs.

    python -m jax_ema.posthoc --run RUN --std 0.07 --out DIR [--step N]

Snapshots: `RUN/snapshots/<step>.npz`, one per `--model-ema-snapshot-every N` updates, each holding

    step           the update count t the EMAs had reached (their "ofs" in EDM2's code)
    stds, gammas   [P] float64: sigma_rel and exponent of each tracked power-function EMA
    params         [P, n_params] the EMAs' flat parameter buffers (ema.FlatTree order), float32 or float16
    batch_stats    [P, n_stats]  the same for the BatchNorm statistics

(np.savez, read back with allow_pickle=False; written to a temporary name and renamed, so a crash never
leaves half a snapshot). float16 halves the size and is what EDM2 stores; an EMA that overflows it is
kept in float32 instead.

Reconstruction (EDM2 Algorithm 3): a snapshot is an average of the weights with the power profile
p(tau) = (g+1) tau^g / t^(g+1) on [0, t]. The target profile (sigma_rel -> gamma, at the last snapshot's
step or `--step`) is approximated in the least-squares sense by a combination of the snapshots' profiles
(those at steps <= the target's): solve A x = b with A the snapshots' pairwise inner products and b
their inner products with the target, both in closed form (`profile_inner_products`), then scale x to
sum to 1. The EMA with that sigma_rel is the same combination of the snapshots' weights.

The output DIR is laid out as a run folder holding one checkpoint (`DIR/checkpoints/<step>/`) whose EMA
is the reconstruction, and whose raw weights are those of the run's checkpoint at that step (else its
latest): `python -m jax_ema.validate --checkpoint DIR --use-ema` and `python -m jax_ema.export
--checkpoint DIR --use-ema --out m.safetensors` take it as any other. It has no optimizer state (not
for --resume). The run's args.yaml is copied beside it, so validate uses the run's data splits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np

from jax_ema import checkpoint, ema, power_ema
from jax_ema.cli import run_cli
from jax_ema.errors import UserError

log = logging.getLogger('jax_ema.posthoc')

SNAPSHOTS = 'snapshots'
KEYS = ('params', 'batch_stats')
DTYPES = ('float32', 'float16')


# ---------------------------------------------------------------- snapshots


def snapshot_due(count: int, every: int, total: int) -> bool:
    """Snapshots every `every` updates (--model-ema-snapshot-every) and at the run's last update."""
    return bool(every) and (count % every == 0 or count == total)


def save_snapshot(
    run_dir, step: int, cfg: ema.EmaConfig, ema_params: ema.FlatTree, ema_stats: ema.FlatTree, dtype: str = 'float32'
) -> Path:
    """Write the power-function members (`cfg.stds`) of the stacked EMA as `RUN/snapshots/<step>.npz`.

    `step` is the update count the EMA has folded in (flush pending update-every-K updates first)."""
    if dtype not in DTYPES:
        raise UserError(f'snapshot dtype {dtype!r} is not one of {", ".join(DTYPES)}')
    if not cfg.stds:
        raise ValueError('no power-function EMA to snapshot: the EmaConfig has no stds')
    arrays = {}
    for key, flat in zip(KEYS, (ema_params, ema_stats)):
        rows = np.asarray(jax.device_get(flat.flat), np.float32)[cfg.power_rows]
        cast = rows.astype(dtype)
        if dtype != 'float32' and not np.all(np.isfinite(cast)):
            log.warning('The %s EMA overflows %s at update %d; this snapshot is stored in float32', key, dtype, step)
            cast = rows
        arrays[key] = cast
    folder = Path(run_dir) / SNAPSHOTS
    path, tmp = folder / f'{int(step)}.npz', folder / f'.{int(step)}.npz.tmp'
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, 'wb') as f:
            np.savez(
                f,
                step=np.int64(step),
                stds=np.float64(cfg.stds),
                gammas=np.float64([power_ema.gamma_from_std(s) for s in cfg.stds]),
                **arrays,
            )
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(
            f'cannot write snapshot {str(path)!r} ({e.strerror}); the earlier snapshots are intact: '
            'fix the folder (free space?), then resume the run with --resume'
        ) from None
    return path


@dataclasses.dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int
    stds: tuple
    gammas: tuple

    def arrays(self, key: str) -> np.ndarray:
        """[P, n] float64 flat buffers of `key` ('params' or 'batch_stats')."""
        with _reading(self.path):
            with np.load(self.path, allow_pickle=False) as f:
                return f[key].astype(np.float64)


@contextlib.contextmanager
def _reading(path: Path):
    """A snapshot that cannot be read (truncated, not an .npz, lacking a key) is a UserError naming it."""
    try:
        yield
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        reason = (
            'truncated or not a snapshot'
            if isinstance(e, (zipfile.BadZipFile, EOFError, zlib.error))
            else type(e).__name__
        )
        raise UserError(
            f'cannot read snapshot {str(path)!r} ({reason}); remove it (a snapshot is written whole '
            'or not at all, so this one was damaged or copied in part)'
        ) from None


def list_snapshots(run_dir) -> list[Snapshot]:
    """The run's snapshots, oldest first; UserError when the run has none."""
    folder = Path(run_dir) / SNAPSHOTS
    if not Path(run_dir).is_dir():
        raise UserError(f'run folder {str(run_dir)!r} does not exist; give the folder of a training run')
    found = []
    for path in sorted(folder.glob('*.npz')) if folder.is_dir() else []:
        if not path.stem.isdigit():
            continue
        with _reading(path):
            with np.load(path, allow_pickle=False) as f:
                found.append(Snapshot(path, int(f['step']), tuple(f['stds'].tolist()), tuple(f['gammas'].tolist())))
    if not found:
        raise UserError(
            f'no EMA snapshots in {str(folder)!r}; train with --model-ema-std S [S ...] '
            '--model-ema-snapshot-every N to write them'
        )
    return sorted(found, key=lambda s: s.step)


# ---------------------------------------------------------------- least squares


def profile_inner_products(t_a, g_a, t_b, g_b):
    """Integral over tau of p_a(tau) p_b(tau) for power profiles p(tau) = (g+1) tau^g / t^(g+1) on [0, t].

    The product is non-zero up to the shorter t; integrating tau^(g_a+g_b) there gives, with s the
    shorter and l the longer, (g_a+1)(g_b+1)/(g_a+g_b+1) * (t_s/t_l)^g_l / t_l. Arrays broadcast."""
    t_a, g_a, t_b, g_b = (np.asarray(x, np.float64) for x in (t_a, g_a, t_b, g_b))
    a_shorter = t_a <= t_b
    ratio = np.where(a_shorter, t_a / t_b, t_b / t_a)
    long_gamma = np.where(a_shorter, g_b, g_a)
    return (g_a + 1) * (g_b + 1) / (g_a + g_b + 1) * ratio**long_gamma / np.maximum(t_a, t_b)


def solve_coefficients(steps, gammas, out_step: float, out_gamma: float) -> np.ndarray:
    """x minimising || sum_i x_i p_i - p_target ||^2 over the profiles p_i (steps[i], gammas[i]), summing to 1."""
    steps, gammas = np.float64(steps), np.float64(gammas)
    gram = profile_inner_products(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    target = profile_inner_products(steps, gammas, out_step, out_gamma)
    try:
        x = np.linalg.solve(gram, target)
    except np.linalg.LinAlgError:
        raise UserError(
            "the snapshots' profiles are linearly dependent (the same sigma_rel at the same step "
            'twice?); remove the duplicates'
        ) from None
    return x / np.sum(x)


def reconstruct(snapshots: list[Snapshot], std: float, step: int | None = None) -> dict:
    """The EMA of relative width `std` at `step` (default: the last snapshot's) from the snapshots.

    Returns {'params', 'batch_stats'} as float32 flat buffers, 'step', 'gamma', 'coefficients' ([P]
    per snapshot used) and 'snapshots' (their steps). Accumulates in float64."""
    gamma = power_ema.gamma_from_std(std)
    step = snapshots[-1].step if step is None else int(step)
    if step not in {s.step for s in snapshots}:
        raise UserError(f'--step {step} is not a snapshot step; use one of {", ".join(str(s.step) for s in snapshots)}')
    used = [s for s in snapshots if 0 < s.step <= step]
    steps = np.float64([s.step for s in used for _ in s.gammas])
    gammas = np.float64([g for s in used for g in s.gammas])
    x = solve_coefficients(steps, gammas, step, gamma)
    result = dict(step=step, gamma=gamma, std=float(std), coefficients=x, snapshots=[s.step for s in used])
    for key in KEYS:
        total, start = None, 0
        for s in used:
            rows = s.arrays(key)
            part = np.tensordot(x[start : start + len(rows)], rows, axes=1)
            total = part if total is None else total + part
            start += len(rows)
        result[key] = total.astype(np.float32)
        if not np.all(np.isfinite(result[key])):
            raise UserError(
                f'the reconstructed {key} are not finite (a snapshot holds NaN/Inf); '
                'remove the bad snapshot or use --snapshot-dtype float32'
            )
    return result


# ---------------------------------------------------------------- output checkpoint


def write_checkpoint(run_dir, out_dir, result: dict) -> Path:
    """DIR/checkpoints/<step>/ with the reconstruction as its EMA (see the module docstring)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt_dir = run_dir / 'checkpoints'
    exact = ckpt_dir / str(result['step'])
    step_dir = exact if (exact / 'metadata').exists() else checkpoint.resolve(run_dir)
    metadata, tree = checkpoint.read_metadata(step_dir), checkpoint.restore_tree(step_dir)
    saved = {'step': np.int64(result['step']), 'params': tree['params'], 'batch_stats': tree.get('batch_stats') or {}}
    for key, name in zip(KEYS, checkpoint.EMA_KEYS):
        layout = ema.FlatTree.of(saved[key], np.float32)
        if layout.flat.shape != result[key].shape:
            raise UserError(
                f'the snapshots hold {result[key].size} {key} values but the checkpoint '
                f'{str(step_dir)!r} has {layout.flat.size}; they come from different models'
            )
        saved[name] = jax.device_get(ema.FlatTree(result[key], layout.others, layout.spec).tree())
    metadata = dict(
        metadata,
        epoch=metadata.get('epoch'),
        metrics=None,
        raw_from=int(step_dir.name),
        best_ema_index=None,
        ema=dict(
            posthoc=True,
            std=result['std'],
            gamma=result['gamma'],
            step=result['step'],
            snapshots=result['snapshots'],
            coefficients=result['coefficients'].tolist(),
        ),
    )
    if (run_dir / 'args.yaml').is_file():
        shutil.copyfile(run_dir / 'args.yaml', out_dir / 'args.yaml')
    manager = checkpoint.open_manager(out_dir / 'checkpoints')
    try:
        return checkpoint.save_tree(manager, saved, metadata)
    finally:
        manager.close()


def build_parser() -> argparse.ArgumentParser:
    from jax_ema.cli import ArgumentParser  # argparse raising UserError

    p = ArgumentParser(
        prog='python -m jax_ema.posthoc',
        description="Reconstruct the EMA of any sigma_rel from a run's power-function EMA snapshots.",
    )
    p.add_argument('--run', required=True, help='the training run folder (holding snapshots/)')
    p.add_argument(
        '--std',
        type=float,
        required=True,
        help=f'the relative width sigma_rel to reconstruct, in (0, {power_ema.MAX_STD:.4f}]',
    )
    p.add_argument('--out', required=True, help='a new folder for the checkpoint')
    p.add_argument('--step', type=int, default=None, help='the snapshot step to reconstruct at (default: the last)')
    return p


def posthoc(run_dir, std: float, out_dir, step: int | None = None) -> dict:
    """Reconstruct and write; returns what was done (std, gamma, step, coefficients, checkpoint)."""
    power_ema.gamma_from_std(std)  # bad --std fails before anything is read
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f'--out {str(out_dir)!r} already exists and is not an empty folder; give a new folder')
    result = reconstruct(list_snapshots(run_dir), std, step)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f'cannot create --out {str(out_dir)!r} ({e.strerror}); give a writable path') from None
    path = write_checkpoint(run_dir, out_dir, result)
    return dict(
        std=result['std'],
        gamma=result['gamma'],
        step=result['step'],
        snapshots=result['snapshots'],
        coefficients=result['coefficients'].tolist(),
        checkpoint=str(path),
    )


def main(argv=None) -> int:
    def run():
        args = build_parser().parse_args(argv)
        done = posthoc(args.run, args.std, args.out, args.step)
        log.info(
            'Reconstructed sigma_rel %g (gamma %.4g) at update %d from %d snapshots into %s',
            done['std'],
            done['gamma'],
            done['step'],
            len(done['snapshots']),
            done['checkpoint'],
        )
        print(f'--result\n{json.dumps(done, indent=4)}', flush=True)
        return 0

    return run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
