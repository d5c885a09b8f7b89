"""The world the bad-input cases run against (tests/test_bad_input.py): one tiny dataset, its broken
variants, checkpoints and weight files, built once per module."""

import dataclasses
import io
import json
import os
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from jax_ema import checkpoint, ema, posthoc, reporting, run_dir, timm_io
from jax_ema.convert import to_timm
from jax_ema.models import create_model
from test_train import IMG, _image_folder, _state

PER_CLASS = 10  # 2 classes x 10 images per split: 20 training images


def _variant(w, name, change):
    """A copy of the good dataset under `name`, altered by change(root)."""
    root = w.root / name
    shutil.copytree(w.data, root)
    change(root)
    return root


def _save_run(run_dir, state, model, num_classes, ema_settings=None):
    manager = checkpoint.open_manager(run_dir / 'checkpoints')
    meta = dict(
        model=model,
        num_classes=num_classes,
        img_size=IMG,
        ema=ema_settings,
        host_ema=False,
        epoch=0,
        position=5,
        metrics=None,
    )
    step_dir = checkpoint.save(manager, state, meta, score=1.0)
    manager.close()
    return step_dir


def _linked_run(step_dir, run, steps=(0,)):
    """A run folder whose checkpoints/<step> are copies of `step_dir` made of hard links (no data copied); each
    step's metadata is a file of its own."""
    for step in steps:
        target = run / 'checkpoints' / str(step)
        shutil.copytree(step_dir, target, copy_function=os.link)
        meta = target / 'metadata' / 'metadata'
        meta.unlink()
        meta.write_text(json.dumps(dict(checkpoint.read_metadata(step_dir), step=step)))
    return run


def _truncated_run(step_dir, run):
    """A linked copy of `step_dir` whose largest array file is cut to half (a copy truncated, the rest links)."""
    _linked_run(step_dir, run)
    files = [p for p in (run / 'checkpoints' / '0' / 'state').rglob('*') if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = largest.read_bytes()
    largest.unlink()
    largest.write_bytes(data[: len(data) // 2])
    return run


def _reliability_world(w):
    """The runs the reliability cases (issue 13) point at: busy, older step, read-only, truncated, foreign."""
    w.run_busy = _linked_run(w.step, w.root / 'runs' / 'busy')
    w.busy_lock = run_dir.RunLock(w.run_busy)  # held by this process while the cases run: another trainer
    w.run_two_steps = _linked_run(w.step, w.root / 'runs' / 'two_steps', steps=(5, 10))
    w.run_read_only = _linked_run(w.step, w.root / 'runs' / 'read_only')
    w.read_only = [w.run_read_only, w.root / 'read_only_out']
    (w.root / 'read_only_out').mkdir()
    w.run_truncated = _truncated_run(w.step, w.root / 'runs' / 'truncated')
    w.foreign = w.root / 'foreign_checkpoint'  # what ocp.StandardCheckpointer writes for another program
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(w.foreign.absolute(), {'w': np.ones(3, np.float32)})
    stds = ema.EmaConfig(decay=0.9, stds=(0.05, 0.1))
    w.run_snapshots = w.root / 'runs' / 'snapshots'  # one good snapshot of two power EMAs, no checkpoint
    stack = ema.init(jnp.zeros(64), members=stds.members)
    posthoc.save_snapshot(w.run_snapshots, 4, stds, stack, ema.init({}, members=stds.members))
    w.run_snapshot_cut = w.root / 'runs' / 'snapshot_cut'
    cut = w.run_snapshot_cut / posthoc.SNAPSHOTS / '4.npz'
    cut.parent.mkdir(parents=True)
    whole = (w.run_snapshots / posthoc.SNAPSHOTS / '4.npz').read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])  # a copy that stopped half way
    w.run_summary = w.root / 'runs' / 'summary_only'  # what plot reads: args.yaml and summary.csv
    w.run_summary.mkdir()
    (w.run_summary / 'args.yaml').write_text('model_ema: false\n')
    row = reporting.summary_row(0, 0.7, 0.1, {'loss': 0.61, 'top1': 50.0, 'top5': 100.0}, None)
    reporting.write_summary(w.run_summary, [row])
    w.run_summary_damaged = w.root / 'runs' / 'summary_damaged'
    shutil.copytree(w.run_summary, w.run_summary_damaged)
    text = (w.run_summary / 'summary.csv').read_text()
    (w.run_summary_damaged / 'summary.csv').write_text(text.replace('50.0', '5O.0'))  # a damaged number


def _weights_file(path, model_name, num_classes):
    """A timm-style state_dict of `model_name` for `num_classes` classes, as .safetensors."""
    model = create_model(model_name, num_classes)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, IMG, IMG, 3)), train=False)
    return timm_io.save_timm_safetensors(to_timm(model_name, jax.device_get(variables)), path)


def build_world(root: Path) -> types.SimpleNamespace:
    """Everything the cases point at, under `root`; attributes are paths (`w.data`, `w.run`, ...)."""
    w = types.SimpleNamespace(root=root)
    w.data = _image_folder(root / 'data', per_class=PER_CLASS)
    w.missing = root / 'no_such_folder'
    w.a_file = root / 'notes.txt'
    w.a_file.write_text('not a dataset\n')
    w.empty = root / 'empty'
    w.empty.mkdir()
    w.no_images = root / 'no_images'
    for name in ('cat', 'dog'):
        (w.no_images / name).mkdir(parents=True)
        (w.no_images / name / 'readme.txt').write_text('no pictures here\n')
    w.empty_class = _variant(w, 'empty_class', lambda r: (r / 'train' / 'bird').mkdir())
    w.classes_differ = _variant(
        w, 'classes_differ', lambda r: (r / 'validation' / 'dog').rename(r / 'validation' / 'bird')
    )
    w.corrupt = _variant(
        w, 'corrupt', lambda r: (r / 'train' / 'cat' / 'broken.png').write_bytes(b'\x89PNG not really')
    )

    def truncate(r):
        full = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(full, format='JPEG')
        (r / 'validation' / 'dog' / 'cut.jpg').write_bytes(full.getvalue()[: len(full.getvalue()) // 2])

    w.truncated = _variant(w, 'truncated', truncate)
    w.out = root / 'out'
    w.out.mkdir()
    w.folder_out = root / 'model.safetensors'  # a folder named like a weights file
    w.folder_out.mkdir()
    w.cwd = root / 'cwd'  # the CLIs run here: a default ./output/train would show up
    w.cwd.mkdir()
    w.hub = root / 'hub'  # an empty Hugging Face cache, offline (hub_cache.offline_hub): --pretrained finds nothing
    w.hub.mkdir()

    state = _state(None, num_classes=2)
    w.run = root / 'runs' / 'resnet18'
    w.step = _save_run(w.run, state, 'resnet18', 2)
    w.run_resnet34 = root / 'runs' / 'resnet34'
    _save_run(w.run_resnet34, state, 'resnet34', 2)
    w.run_5_classes = root / 'runs' / 'five_classes'
    _save_run(w.run_5_classes, state, 'resnet18', 5)
    stacked = ema.EmaConfig(decay=0.9, extra_decays=(0.99,))  # a run of 2 EMAs
    w.run_2_emas = root / 'runs' / 'two_emas'
    _save_run(w.run_2_emas, _state(stacked, num_classes=2), 'resnet18', 2, dataclasses.asdict(stacked))
    w.run_tmp_only = root / 'runs' / 'tmp_only'  # a save that died before orbax renamed its folder
    tmp_step = w.run_tmp_only / 'checkpoints' / '5.orbax-checkpoint-tmp-1732600000'
    shutil.copytree(w.step / 'state', tmp_step / 'state')
    w.run_no_metadata = root / 'runs' / 'no_metadata'
    shutil.copytree(w.step, w.run_no_metadata / 'checkpoints' / w.step.name)
    shutil.rmtree(w.run_no_metadata / 'checkpoints' / w.step.name / 'metadata')
    w.run_empty_state = root / 'runs' / 'empty_state'
    shutil.copytree(w.step, w.run_empty_state / 'checkpoints' / w.step.name)
    shutil.rmtree(w.run_empty_state / 'checkpoints' / w.step.name / 'state')
    (w.run_empty_state / 'checkpoints' / w.step.name / 'state').mkdir()

    w.run_list_metadata = root / 'runs' / 'list_metadata'  # metadata that is JSON but not an object
    shutil.copytree(w.step, w.run_list_metadata / 'checkpoints' / w.step.name)
    (w.run_list_metadata / 'checkpoints' / w.step.name / 'metadata' / 'metadata').write_text('[1, 2]')

    _reliability_world(w)

    w.weights_5 = _weights_file(root / 'resnet18_5_classes.safetensors', 'resnet18', 5)
    w.weights_r18 = _weights_file(root / 'resnet18_2_classes.safetensors', 'resnet18', 2)
    w.weights_text = root / 'weights.pth'
    w.weights_text.write_text('this is not a torch file\n')
    return w
