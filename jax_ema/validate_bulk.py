"""Bulk validation, as timm's validate.py runs it, and the results file.

What is validated, in timm's order of precedence:
- a `--checkpoint` folder of timm files (`*.pth.tar`, `*.pth`, and here `*.safetensors`), each with `--model`,
  in natural order (timm: `--checkpoint DIR`); several `--checkpoint` values, each (not in timm, whose
  --checkpoint takes one path: `--checkpoint RUN/checkpoints/*/` validates every checkpoint of a run);
- `--model all`: every model and tag with pretrained weights we build, less timm's non-ImageNet-1k ones
  (NON_IN1K_FILTERS); `--model PATTERN` with a wildcard: the models and tags it matches, as timm's
  `list_models(PATTERN, pretrained=True)` (a pattern without a tag also matches every tag);
- `--model FILE`: the model names in FILE, one a line.
The last three validate pretrained weights, so they take no --checkpoint. A model or checkpoint that fails is
logged as timm's `ERROR: <name> failed to validate (<why>).` and left out; the others are sorted by top-1,
best first, as timm's. If none validates, that is an error. Out of memory, each model is retried at smaller batch
sizes from -b, as timm's bulk validation always does (validate_retry.py).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import json
import logging
import os
import re
from pathlib import Path

from jax_ema.errors import UserError
from jax_ema.models import MODEL_NAMES
from jax_ema.pretrained_cfgs import PRETRAINED_CFGS, split_model_name

log = logging.getLogger('jax_ema.validate')

NON_IN1K_FILTERS = ('*_in21k', '*_in22k', '*in12k', '*_dino', '*fcmae', '*seer')  # timm validate.py's
TIMM_SUFFIXES = ('.pth.tar', '.pth', '.safetensors')


def natural_key(text: str) -> list:
    """'ckpt-10' after 'ckpt-9': digit runs compare as numbers (timm's natural_key)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text.lower())]


def _with_tags(pattern: str) -> list[str]:
    """timm's filter expansion: a pattern without a tag also matches the names with any tag."""
    return [pattern] if split_model_name(pattern)[1] else [f'{pattern}.*', pattern]


def pretrained_models(pattern: str) -> list[str]:
    """The `arch.tag` names with pretrained weights that `--model pattern` ('all' or a wildcard) means."""
    names = set(PRETRAINED_CFGS)
    if pattern != 'all':
        names = {n for p in _with_tags(pattern) for n in fnmatch.filter(names, p)}
    else:
        names -= {n for f in NON_IN1K_FILTERS for p in _with_tags(f) for n in fnmatch.filter(names, p)}
    return sorted(names, key=natural_key)


def timm_files(folder) -> list[Path]:
    """The timm weights files directly in `folder`, in natural order; [] where it is not a folder or is one of
    ours (a run, checkpoints/ or step folder)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / 'state').is_dir() or (folder / 'checkpoints').is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(TIMM_SUFFIXES)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _model_list(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read --model {str(path)!r} as a list of model names ({type(e).__name__})') from None
    if not names:
        raise UserError(f'--model {str(path)!r} names no model; write one model name a line')
    return names


def targets(model: str | None, checkpoints: list | None) -> list[tuple] | None:
    """The (model, checkpoint) pairs of a bulk validation (checkpoint None: pretrained weights), or None for a
    single one."""
    bulk_model = bool(model) and (model == 'all' or any(c in model for c in '*?['))
    if checkpoints:
        if bulk_model:
            raise UserError(
                f'--model {model} validates pretrained weights; give one model name with --checkpoint, or '
                'leave out --checkpoint'
            )
        if len(checkpoints) > 1:
            return [(model, str(c)) for c in checkpoints]
        files = timm_files(checkpoints[0])
        return [(model, str(f)) for f in files] if files else None
    if bulk_model:
        names = pretrained_models(model)
        if not names:
            raise UserError(
                f'--model {model} matches no model with pretrained weights; models: {", ".join(MODEL_NAMES)} '
                '(each NAME.TAG; `--model all` for all)'
            )
        return [(n, None) for n in names]
    if model and split_model_name(model)[0] not in MODEL_NAMES and Path(model).is_file():
        return [(n, None) for n in _model_list(Path(model))]
    return None


def sweep(pairs: list[tuple], validate_one, save=None) -> list[dict]:
    """validate_one(model, checkpoint) for each pair; the results sorted by top-1, best first, without those
    that failed (logged as timm's), also given to `save` after each one (a long sweep killed keeps its
    results file). Ctrl-C ends the sweep with the results so far, as timm's."""
    names = [str(checkpoint or model) for model, checkpoint in pairs]
    log.info('Running bulk validation on these: %s', ', '.join(names))
    results, failed = [], []
    try:
        for (model, checkpoint), name in zip(pairs, names):
            try:
                results.append(validate_one(model, checkpoint))
            except UserError as e:
                why = str(e)
            except Exception as e:  # pylint: disable=broad-except  # one model's fault must not end the sweep
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
                why = f'{type(e).__name__}{": " + first if first else ""}'
            else:
                if save:
                    save(sorted(results, key=lambda r: r['top1'], reverse=True))
                continue
            log.error('%s failed to validate (%s).', name, why)
            failed.append(name)
    except KeyboardInterrupt:
        log.warning('Interrupted: the results of the %d validated so far follow', len(results))
    if failed:
        log.warning('%d of %d failed to validate: %s', len(failed), len(pairs), ', '.join(failed))
    if not results and failed:
        raise UserError(f'none of the {len(pairs)} validated; the ERROR lines above say why')
    return sorted(results, key=lambda r: r['top1'], reverse=True)


def check_results_file(path) -> None:
    """UserError, before anything is validated, where --results-file cannot be written (a probe file is made
    beside it and removed)."""
    probe = Path(f'{path}.tmp')
    try:
        if Path(path).is_dir():
            raise IsADirectoryError(errno.EISDIR, 'a folder')
        probe.open('w').close()
        probe.unlink()
    except OSError as e:
        raise UserError(
            f'cannot write --results-file {str(path)!r} ({e.strerror or e}); give a writable path in an existing folder'
        ) from None


def write_results(path, results, fmt: str = 'csv') -> None:
    """timm's --results-file: csv (a header, then one row per result) or the JSON of `results` (an object, or a
    list for a bulk validation); written whole or not at all (a temporary file renamed)."""
    rows = results if isinstance(results, list) else [results]
    fields = list(dict.fromkeys(k for row in rows for k in row))  # optional keys (dataset, ema_index) of any row
    tmp = Path(f'{path}.tmp')
    try:
        with open(tmp, 'w', newline='') as f:
            if fmt == 'json':
                json.dump(results, f, indent=4)
            elif rows:
                writer = csv.DictWriter(f, fieldnames=fields, restval='')
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UserError(
            f'cannot write --results-file {str(path)!r} ({e.strerror or e}); give a writable path in an existing folder'
        ) from None
