"""No code runs from data: a static scan of jax_ema/ and torch_ref/, and hostile files that must stay data.

The scan (AST, not grep) forbids: pickle-family imports, eval/exec/__import__/importlib, `torch.load`
without `weights_only=True`, `np.load(allow_pickle=...)` other than False, and yaml loaders that build
objects. Then a `.pth` whose unpickling would create a folder is refused with a UserError and nothing
is created, and checkpoint metadata holding Python source is read as a plain string.
"""

import ast
import importlib.util
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

from jax_ema import checkpoint, export, timm_io
from jax_ema.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SCANNED = ('jax_ema', 'torch_ref')
PICKLE_MODULES = {'pickle', 'cPickle', '_pickle', 'dill', 'joblib', 'cloudpickle', 'shelve', 'marshal'}
DYNAMIC_CODE = {'eval', 'exec', '__import__'}
TORCH_LOADS = {'torch.load', 'torch.serialization.load'}
NUMPY_LOADS = {'numpy.load'}
YAML_UNSAFE = {
    'yaml.load',
    'yaml.load_all',
    'yaml.full_load',
    'yaml.full_load_all',
    'yaml.unsafe_load',
    'yaml.unsafe_load_all',
}
YAML_SAFE_LOADERS = {'SafeLoader', 'CSafeLoader', 'BaseLoader', 'CBaseLoader'}


def _dotted(node, aliases: dict) -> str | None:
    """`np.load` -> 'numpy.load' (import aliases resolved); None for anything but a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return '.'.join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    """The keyword's value node; '**' if the call passes **kwargs (which could hold it); else None."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return '**' if any(kw.arg is None for kw in call.keywords) else None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def scan_source(source: str, filename: str = '<source>') -> list[str]:
    """Every unsafe construct in `source`, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = {}  # local name -> the dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split('.')[0]] = a.name if a.asname else a.name.split('.')[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                aliases[a.asname or a.name] = f'{node.module}.{a.name}'
    found = []

    def flag(node, what):
        found.append(f'{filename}:{node.lineno}: {what}')

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or '']
            for module in modules:
                top = module.split('.')[0]
                if top in PICKLE_MODULES:
                    flag(node, f'imports {module} (unpickling runs code)')
                if top == 'importlib':
                    flag(node, 'imports importlib (dynamic imports)')
            if isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'builtins':
                for a in node.names:
                    if a.name in DYNAMIC_CODE:
                        flag(node, f'imports builtins.{a.name}')
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        if name in DYNAMIC_CODE or name in {f'builtins.{n}' for n in DYNAMIC_CODE}:
            flag(node, f'calls {name}()')
        elif name.split('.')[0] == 'importlib':
            flag(node, f'calls {name}()')
        elif name in TORCH_LOADS:
            if not _is_const(_keyword(node, 'weights_only'), True):
                flag(node, f'calls {name}() without weights_only=True')
        elif name in NUMPY_LOADS:
            allow = _keyword(node, 'allow_pickle')
            if allow is not None and not _is_const(allow, False):
                flag(node, f'calls {name}() with allow_pickle')
        elif name in YAML_UNSAFE:
            loader = _keyword(node, 'Loader')
            if len(node.args) > 1:
                loader = node.args[1]
            loader_name = _dotted(loader, aliases) if isinstance(loader, ast.AST) else None
            if not (
                name in {'yaml.load', 'yaml.load_all'}
                and loader_name
                and loader_name.split('.')[-1] in YAML_SAFE_LOADERS
            ):
                flag(node, f'calls {name}() with a loader that builds objects')
    return found


def _modules() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO / folder).rglob('*.py'))


# --- the scan ----------------------------------------------------------------------------------------


def test_scan_covers_the_library_and_the_reference():
    names = {str(p.relative_to(REPO)) for p in _modules()}
    assert {'jax_ema/train.py', 'jax_ema/timm_io.py', 'jax_ema/data/__init__.py', 'torch_ref/trainer.py'} <= names
    assert any(n.startswith('jax_ema/models/') for n in names)


@pytest.mark.parametrize('path', _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_has_no_code_from_data(path):
    assert scan_source(path.read_text(), str(path.relative_to(REPO))) == []


BAD_SOURCE = """
import pickle
import cPickle as cp
from dill import loads
import joblib
import importlib
import numpy as np
import torch as th
import yaml
from torch import load
eval("1")
exec("x = 1")
__import__("os")
importlib.import_module("os")
th.load("a.pth")
th.load("a.pth", weights_only=False)
load("a.pth")
th.load("a.pth", **options)
np.load("a.npy", allow_pickle=True)
np.load("a.npy", allow_pickle=flag)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
"""

GOOD_SOURCE = """
import numpy as np
import torch
import yaml
torch.load("a.pth", map_location="cpu", weights_only=True)
np.load("a.npy")
np.load("a.npy", allow_pickle=False)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
model.eval()
jitted.lower(x).compile()
"""


def test_the_scan_flags_each_unsafe_construct_and_nothing_safe():
    found = scan_source(BAD_SOURCE)
    lines = sorted({int(f.split(':')[1]) for f in found})
    expected = [
        n + 1
        for n, line in enumerate(BAD_SOURCE.splitlines())
        if line and not line.startswith(('import numpy', 'import torch', 'import yaml', 'from torch'))
    ]
    assert lines == expected, found
    assert scan_source(GOOD_SOURCE) == []


# --- hostile files -----------------------------------------------------------------------------------


class _MakesAFolder:
    """Unpickling this calls os.mkdir(path): stands for any code an attacker would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _hostile_pickle(marker) -> bytes:
    return pickle.dumps({'state_dict': {'fc.weight': _MakesAFolder(marker)}}, protocol=2)


def _write(path: Path, payload: bytes, layout: str) -> Path:
    if layout == 'zip':  # torch.save's format: <name>/data.pkl (+ byteorder, version) in a stored zip
        with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
            z.writestr('archive/data.pkl', payload)
            z.writestr('archive/byteorder', 'little')
            z.writestr('archive/version', '3\n')
    else:  # a bare pickle, torch's legacy layout
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    'name,layout',
    [('weights.pth', 'zip'), ('weights.pth.tar', 'zip'), ('weights.pth', 'plain'), ('pytorch_model.bin', 'plain')],
)
def test_a_pth_that_would_run_code_is_refused(tmp_path, monkeypatch, name, layout):
    monkeypatch.chdir(tmp_path)
    probe = tmp_path / 'probe'
    pickle.loads(_hostile_pickle(probe))  # the payload does run code when unpickled naively
    assert probe.is_dir()
    marker = tmp_path / 'pwned'
    path = _write(tmp_path / name, _hostile_pickle(marker), layout)
    with pytest.raises(UserError) as info:
        timm_io.load_timm_state_dict(path)
    with pytest.raises(UserError):
        timm_io.load_timm_state_dict(path, use_ema=True)
    message = str(info.value)
    assert not marker.exists(), 'unpickling ran code'
    assert str(path) in message and '\n' not in message
    if importlib.util.find_spec('torch') is not None:
        assert 'for safety' in message, message
    else:
        assert 'needs PyTorch' in message, message


def test_checkpoint_metadata_is_only_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / 'X'
    code = {
        'touch': f"__import__('os').system('touch {marker}')",
        'mkdir': f"__import__('os').mkdir('{marker}')",
        'eval': f"eval(\"__import__('os').mkdir('{marker}')\")",
    }
    step = tmp_path / 'run' / 'checkpoints' / '7'
    (step / 'state').mkdir(parents=True)
    (step / 'metadata').mkdir()
    metadata = {
        'model': code['touch'],
        'num_classes': code['mkdir'],
        'img_size': code['eval'],
        'ema': {'decay': code['touch']},
        'score': 1.0,
        'step': 7,
        code['mkdir']: code['touch'],
    }
    (step / 'metadata' / 'metadata').write_text(json.dumps(metadata))
    for given in (tmp_path / 'run', step.parent, step, step.parent / 'best', step.parent / 'last'):
        resolved = checkpoint.resolve(given)
        assert resolved == step
        assert checkpoint.read_metadata(resolved) == metadata  # the very strings, not what they would do
    assert export.main(['--checkpoint', str(tmp_path / 'run'), '--out', str(tmp_path / 'm.safetensors')]) == 2
    assert capsys.readouterr().err.startswith('error: ')
    assert not marker.exists(), 'metadata ran as code'
    assert not (tmp_path / 'm.safetensors').exists()
