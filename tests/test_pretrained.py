"""--pretrained / --pretrained-path and the data config, JAX side; everything offline (a hub cache the test
builds). Parity with timm (forward, registry, resolve_data_config): parity_tests/test_pretrained_parity.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from cli_output import error_line
from hub_cache import offline_hub, write_hub_cache
from jax_ema import checkpoint, pretrained, pretrained_cfgs, reporting, timm_io
from jax_ema.config import DIGITS_DEFAULTS, parse_args
from jax_ema.convert import to_flax, to_timm
from jax_ema.data_config import resolve_data_config
from jax_ema.errors import UserError
from jax_ema.models import MODEL_NAMES, create_model
from jax_ema.validate import validate
from test_train import IMG, _image_folder

ROOT = Path(__file__).resolve().parent.parent
HEAD = {('params', 'fc', 'kernel'), ('params', 'fc', 'bias')}  # resnet18's classifier


def _init(model_name, num_classes, seed, in_chans=3):
    model = create_model(model_name, num_classes, in_chans=in_chans)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, IMG, IMG, in_chans)), train=False))
    return jax.device_get(init(jax.random.PRNGKey(seed)))


def _flat(tree) -> dict:
    return {
        tuple(k.key for k in path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.fixture(scope='module')
def hub_weights():
    """A timm state_dict of resnet18 with ImageNet's 1000 classes (our init, seed 1): 'the hub's file'."""
    return to_timm('resnet18', _init('resnet18', 1000, seed=1))


# --- the classifier, as timm's load_pretrained -------------------------------------------------------


def test_classifier_is_kept_when_the_classes_match(hub_weights, caplog):
    caplog.set_level('INFO', logger='jax_ema.pretrained')
    loaded = pretrained.load_pretrained('resnet18', 1000, _init('resnet18', 1000, seed=0), hub_weights)
    expected = _flat(to_flax('resnet18', hub_weights))
    got = _flat(loaded)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=str(path))
        assert got[path].dtype == np.float32
    assert 'classifier kept (1000 classes)' in caplog.text


@pytest.mark.parametrize('drop_head', [False, True], ids=['other_classes', 'file_without_classifier'])
def test_classifier_starts_afresh_when_the_classes_differ(hub_weights, caplog, drop_head):
    caplog.set_level('INFO', logger='jax_ema.pretrained')
    weights = {k: v for k, v in hub_weights.items() if not (drop_head and k.startswith('fc.'))}
    init = _init('resnet18', 5, seed=0)
    got, fresh = _flat(pretrained.load_pretrained('resnet18', 5, init, weights)), _flat(init)
    expected = _flat(to_flax('resnet18', hub_weights))
    assert got.keys() == fresh.keys()
    for path, value in got.items():
        np.testing.assert_array_equal(value, fresh[path] if path in HEAD else expected[path], err_msg=str(path))
    lines = [r.getMessage() for r in caplog.records if 'starts afresh' in r.getMessage()]
    assert lines == [
        f'The pretrained classifier ({"none" if drop_head else "1000 classes"}) does not fit this '
        "run's 5 classes: the classifier starts afresh"
    ]


def test_weights_of_another_architecture_are_one_line(hub_weights):
    with pytest.raises(UserError, match="missing key 'layer1.2.*resnet34"):
        pretrained.load_pretrained('resnet34', 5, _init('resnet34', 5, seed=0), hub_weights)


# --- --in-chans: the first conv adapted, as timm's adapt_input_conv -----------------------------------


def _logits(variables, x, in_chans):
    model = create_model('resnet18', 1000, in_chans=in_chans)
    with jax.default_matmul_precision('highest'):
        return np.asarray(model.apply(variables, x, train=False))


@pytest.mark.parametrize('in_chans', [1, 6])
def test_in_chans_adapts_the_first_conv_so_replicated_rgb_gives_the_rgb_logits(hub_weights, caplog, in_chans):
    """1 channel: the filters summed over RGB, so a grey image g gives the RGB model's logits on (g, g, g);
    6 channels: RGB repeated and halved, so (R, G, B, R, G, B) gives the logits of (R, G, B). Every other
    weight is the file's; one log line says what was converted."""
    caplog.set_level('INFO', logger='jax_ema.pretrained')
    rgb = pretrained.load_pretrained('resnet18', 1000, None, hub_weights)
    got = pretrained.load_pretrained('resnet18', 1000, None, hub_weights, dict(in_chans=in_chans))
    assert got['params']['conv1']['kernel'].shape == (7, 7, in_chans, 64)
    assert got['params']['conv1']['kernel'].dtype == np.float32
    same, theirs = _flat(got), _flat(rgb)
    assert same.keys() == theirs.keys()
    for path, value in same.items():
        if path != ('params', 'conv1', 'kernel'):
            np.testing.assert_array_equal(value, theirs[path], err_msg=str(path))
    x = np.random.RandomState(0).rand(2, IMG, IMG, 3).astype(np.float32)
    if in_chans == 1:
        x, wide = x[..., :1], np.repeat(x[..., :1], 3, axis=-1)
    else:
        x, wide = np.concatenate([x, x], axis=-1), x
    expected = _logits(rgb, wide, 3)
    np.testing.assert_allclose(_logits(got, x, in_chans), expected, atol=1e-5 * np.abs(expected).max())
    assert f'Converted input conv conv1 pretrained weights from 3 to {in_chans} channel(s)' in caplog.text


def test_first_conv_that_already_fits_in_chans_is_loaded_unchanged(caplog):
    """A file whose first conv has the model's channels already (e.g. exported from a --in-chans 1 run) is
    loaded as it is, with timm's warning that the pretrained config declares 3."""
    grey = to_timm('resnet18', _init('resnet18', 1000, seed=2, in_chans=1), dict(in_chans=1))
    caplog.set_level('INFO', logger='jax_ema.pretrained')
    got = pretrained.load_pretrained('resnet18', 1000, None, grey, dict(in_chans=1))
    np.testing.assert_array_equal(got['params']['conv1']['kernel'], grey['conv1.weight'].transpose(2, 3, 1, 0))
    assert 'Pretrained conv1 weights already match the model (1 input channels), not the 3 of its' in caplog.text
    assert 'Converted input conv' not in caplog.text


@pytest.mark.parametrize('file_chans,in_chans', [(1, 3), (2, 1)])
def test_first_conv_of_other_channels_is_one_line(hub_weights, file_chans, in_chans):
    """A first conv with neither the pretrained config's 3 channels nor the model's: refused (timm raises too)."""
    weights = dict(hub_weights, **{'conv1.weight': hub_weights['conv1.weight'][:, :file_chans]})
    with pytest.raises(UserError) as e:
        pretrained.load_pretrained('resnet18', 1000, None, weights, dict(in_chans=in_chans))
    assert str(e.value) == (
        f'the pretrained conv1.weight has shape (64, {file_chans}, 7, 7): {file_chans} input channels, not the 3 '
        f'of resnet18 pretrained weights, and the model takes {in_chans} (--in-chans); give weights with 3 or '
        f'{in_chans} input channels'
    )


def test_first_conv_timm_cannot_adapt_keeps_the_initialisation(hub_weights, caplog):
    """A first conv that is not 4-D: timm's adapt_input_conv cannot adapt it, so the layer keeps its random
    initialisation (timm's warning) and the rest is the file's."""
    caplog.set_level('INFO', logger='jax_ema.pretrained')
    weights = dict(hub_weights, **{'conv1.weight': hub_weights['conv1.weight'].reshape(64, -1)})
    init = _init('resnet18', 1000, seed=0, in_chans=1)
    got = _flat(pretrained.load_pretrained('resnet18', 1000, init, weights, dict(in_chans=1)))
    np.testing.assert_array_equal(got[('params', 'conv1', 'kernel')], _flat(init)[('params', 'conv1', 'kernel')])
    np.testing.assert_array_equal(got[('params', 'fc', 'kernel')], hub_weights['fc.weight'].T)
    assert 'Unable to convert pretrained conv1 weights, using random init for this layer' in caplog.text


# --- tags and the hub ------------------------------------------------------------------------------


def test_model_tags_resolve_as_timm_names_them():
    assert pretrained.hub_cfg('resnet50').hub_id == 'timm/resnet50.a1_in1k'  # the default tag
    assert pretrained.hub_cfg('resnet50.tv_in1k').hub_id == 'timm/resnet50.tv_in1k'
    assert pretrained.hub_cfg('efficientnet_b1').name == 'efficientnet_b1.ra4_e3600_r240_in1k'
    assert create_model('resnet50.tv_in1k', 3).num_classes == 3  # the tag names weights, not another module
    with pytest.raises(UserError, match="resnet50 has no pretrained tag 'a9_in1k'; known tags: a1_in1k, "):
        pretrained.hub_cfg('resnet50.a9_in1k')
    assert set(pretrained_cfgs.DEFAULT_TAGS) == set(MODEL_NAMES)  # every supported model has weights


def test_download_reads_the_offline_cache_and_names_a_missing_file(tmp_path, hub_weights):
    written = write_hub_cache(tmp_path, 'timm/resnet18.a1_in1k', hub_weights)
    with offline_hub(tmp_path):
        path = pretrained.download(pretrained.hub_cfg('resnet18'))
        assert path.read_bytes() == written.read_bytes()
        with pytest.raises(UserError) as e:
            pretrained.download(pretrained.hub_cfg('resnet18.tv_in1k'))
    assert str(e.value) == (
        f'model.safetensors of timm/resnet18.tv_in1k is not in the Hugging Face cache ({tmp_path}) and '
        'HF_HUB_OFFLINE is set; get it where there is network with `hf download timm/resnet18.tv_in1k '
        'model.safetensors` (into the same HF_HOME / HF_HUB_CACHE), or give the file with --pretrained-path FILE'
    )


# --- the data config -------------------------------------------------------------------------------


def test_data_config_comes_from_the_model_unless_a_flag_sets_it(tmp_path):
    folder = str(tmp_path)
    c = parse_args([folder, '--model', 'resnet50.tv2_in1k'])  # timm: 176 px, bilinear, 0.875
    assert (c.img_size, c.interpolation, c.crop_pct, c.mean) == (176, 'bilinear', 0.875, pretrained_cfgs.IMAGENET[0])
    c = parse_args([folder, '--model', 'efficientnet_b1'])  # its default tag: ra4, 240 px, Inception mean/std
    assert (c.img_size, c.interpolation, c.crop_pct, c.std) == (240, 'bicubic', 0.9, (0.5, 0.5, 0.5))
    c = parse_args(
        [
            folder,
            '--model',
            'resnet18',
            '--img-size',
            '48',
            '--input-size',
            '3',
            '64',
            '64',
            '--crop-pct',
            '1',
            '--interpolation',
            'bilinear',
            '--mean',
            '0.5',
            '--std',
            '0.2',
            '0.3',
            '0.4',
        ]
    )
    assert (c.img_size, c.interpolation, c.crop_pct, c.mean, c.std) == (
        64,
        'bilinear',
        1.0,
        (0.5, 0.5, 0.5),
        (0.2, 0.3, 0.4),
    )  # --input-size wins over --img-size, as in timm
    digits = parse_args(['--model', 'efficientnet_b1'])  # no DATA: the digits keep their own settings
    assert {k: getattr(digits, k) for k in ('img_size', 'crop_pct', 'interpolation', 'mean', 'std')} == {
        k: DIGITS_DEFAULTS[k] for k in ('img_size', 'crop_pct', 'interpolation', 'mean', 'std')
    }
    assert parse_args([folder, '--pretrained-path', 'w.safetensors']).pretrained  # the path implies --pretrained


@pytest.mark.parametrize(
    'overrides,message',
    [
        (dict(input_size=(3, 32, 48)), 'square RGB images'),
        (dict(input_size=(1, 32, 32)), 'square RGB images'),
        (dict(interpolation='nearest'), "'nearest' is not supported"),
        (dict(mean=(0.1, 0.2)), '--mean takes 1 or 3 finite numbers'),
        (dict(std=(0.5, 0.0, 0.5)), '--std must be > 0'),
        (dict(crop_pct=1.5), '--crop-pct must be in (0, 1]'),
    ],
)
def test_bad_data_config_is_one_line(overrides, message):
    with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
        resolve_data_config('resnet18', **overrides)


# --- the trainer, end to end, in a subprocess that sees only the environment variables ----------------


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu', **extra)
    env.setdefault('JAX_COMPILATION_CACHE_DIR', str(Path(jax.config.jax_compilation_cache_dir or '/tmp')))
    return env


@pytest.mark.slow
def test_cli_pretrained_from_an_offline_hub_cache(tmp_path, hub_weights):
    """--pretrained with HF_HUB_OFFLINE=1 and HF_HUB_CACHE: training (lr 1e-30: the weights cannot move) starts
    from the hub's weights with a fresh classifier (2 classes, not 1000), and so does the EMA; args.yaml and the
    checkpoint hold the model's data config (resnet18.a1_in1k: bicubic, crop_pct 0.95), and validate uses it."""
    data = _image_folder(tmp_path / 'ds')
    write_hub_cache(tmp_path / 'hub', 'timm/resnet18.a1_in1k', hub_weights)
    argv = [
        sys.executable,
        '-m',
        'jax_ema.train',
        str(data),
        '--model',
        'resnet18',
        '--pretrained',
        '--img-size',
        str(IMG),
        '-b',
        '4',
        '--epochs',
        '1',
        '--warmup-epochs',
        '0',
        '--lr',
        '1e-30',
        '-j',
        '1',
        '--model-ema',
        '--model-ema-decay',
        '0.9',
        '--output',
        str(tmp_path / 'out'),
        '--experiment',
        'ft',
    ]
    done = subprocess.run(
        argv,
        env=_env(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'hub')),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Pretrained weights of resnet18: timm/resnet18.a1_in1k on the Hugging Face hub' in done.stderr
    assert "The pretrained classifier (1000 classes) does not fit this run's 2 classes" in done.stderr
    assert (
        'Data config for resnet18: input_size (3, 32, 32), interpolation bicubic, mean (0.485, 0.456, 0.406), '
        'std (0.229, 0.224, 0.225), crop_pct 0.95, crop_mode center'
    ) in done.stderr

    run = tmp_path / 'out' / 'ft'
    step_dir = checkpoint.resolve(run)
    tree, meta = checkpoint.restore_tree(step_dir), checkpoint.read_metadata(step_dir)
    expected, fresh = _flat(to_flax('resnet18', hub_weights)), _flat(_init('resnet18', 2, seed=42))
    for weights in ('params', 'ema_params'):  # (BatchNorm statistics move in train mode, whatever the lr)
        got = _flat({'params': tree[weights]})
        assert got.keys() == {p for p in fresh if p[0] == 'params'}
        for path, value in got.items():
            np.testing.assert_allclose(
                value,
                fresh[path] if path in HEAD else expected[path],
                rtol=1e-6,
                atol=1e-20,
                err_msg=f'{weights} {path}',
            )
    assert meta['pretrained'] == 'timm/resnet18.a1_in1k'
    assert meta['data_config'] == dict(
        input_size=[3, IMG, IMG],
        interpolation='bicubic',
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        crop_pct=0.95,
        crop_mode='center',
    )
    args = yaml.safe_load((run / 'args.yaml').read_text())
    assert (args['interpolation'], args['crop_pct'], args['pretrained']) == ('bicubic', 0.95, True)

    row = reporting.read_summary(run)[-1]
    got = validate(run, data=data, use_ema=True, workers=1)
    assert (got['interpolation'], got['crop_pct']) == ('bicubic', 0.95)
    assert got['loss'] == pytest.approx(float(row['ema_eval_loss']), rel=1e-5)
    assert got['top1'] == pytest.approx(float(row['ema_eval_top1']))
    results = json.loads((run / 'results.json').read_text())
    assert results['final']['ema']['loss'] == pytest.approx(got['loss'], rel=1e-5)


@pytest.mark.slow
def test_cli_pretrained_greyscale_trains_validates_and_exports(tmp_path, hub_weights, capsys):
    """--pretrained --in-chans 1 from an offline hub cache (lr 1e-30: the weights cannot move): the run starts
    from the RGB stem summed over its channels, its checkpoint records in_chans 1, validate rebuilds the
    1-channel model and gets the run's EMA numbers, export writes a 1-channel conv1 and prints in_chans=1."""
    from jax_ema.export import main as export_main
    from jax_ema.train import main as train_main

    data = _image_folder(tmp_path / 'ds')
    write_hub_cache(tmp_path / 'hub', 'timm/resnet18.a1_in1k', hub_weights)
    argv = [str(data), '--model', 'resnet18', '--pretrained', '--in-chans', '1', '--mean', '0.5', '--std', '0.5']
    argv += ['--img-size', str(IMG), '-b', '4', '--epochs', '1', '--warmup-epochs', '0', '--lr', '1e-30', '-j', '1']
    argv += ['--model-ema', '--model-ema-decay', '0.9', '--output', str(tmp_path / 'out'), '--experiment', 'grey']
    with offline_hub(tmp_path / 'hub'):
        assert train_main(argv) == 0
    run = tmp_path / 'out' / 'grey'
    step_dir = checkpoint.resolve(run)
    tree, meta = checkpoint.restore_tree(step_dir), checkpoint.read_metadata(step_dir)
    summed = hub_weights['conv1.weight'].sum(axis=1, keepdims=True).transpose(2, 3, 1, 0)
    for weights in ('params', 'ema_params'):
        np.testing.assert_allclose(tree[weights]['conv1']['kernel'], summed, rtol=1e-6, atol=1e-20)
    assert meta['model_kwargs'] == dict(in_chans=1)
    assert meta['pretrained'] == 'timm/resnet18.a1_in1k'
    assert meta['data_config']['input_size'] == [1, IMG, IMG]

    row = reporting.read_summary(run)[-1]
    got = validate(run, data=data, use_ema=True, workers=1)
    # validate decodes the images as the run did: as 'L' on the host (not RGB greyed on the device after the resize)
    assert got['loss'] == pytest.approx(float(row['ema_eval_loss']), rel=1e-6)
    assert got['top1'] == pytest.approx(float(row['ema_eval_top1']))

    out = tmp_path / 'grey.safetensors'
    capsys.readouterr()
    assert export_main(['--checkpoint', str(run), '--use-ema', '--out', str(out)]) == 0
    assert 'in_chans=1' in capsys.readouterr().out
    exported = timm_io.load_timm_state_dict(out)
    np.testing.assert_allclose(exported['conv1.weight'], hub_weights['conv1.weight'].sum(1, keepdims=True), rtol=1e-6)


def test_pth_without_torch_is_one_line(tmp_path):
    """--pretrained-path FILE.pth where torch is not installed (its import blocked): one line, exit 2."""
    weights = tmp_path / 'w.pth'
    weights.write_bytes(b'not read')
    data = _image_folder(tmp_path / 'ds')
    code = (
        'import sys; sys.modules["torch"] = None; from jax_ema.train import main; '
        f'sys.exit(main([{str(data)!r}, "--model", "resnet18", "--pretrained-path", {str(weights)!r}, '
        f'"--output", {str(tmp_path / "out")!r}]))'
    )
    done = subprocess.run([sys.executable, '-c', code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert error_line(done.stderr) == (  # after the run's log lines
        f"error: reading '{weights}' needs PyTorch (pip install torch); or convert it to .safetensors"
    )
    assert not (tmp_path / 'out').exists()
