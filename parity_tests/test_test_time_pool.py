"""validate --test-pool against timm's own test-time pooling: TestTimePoolHead's logits on identical weights
(float32, pinned precision; float64 to roundoff), apply_test_time_pool's decision and timm's pool_size for every
pretrained config we carry, and the models timm's head cannot take."""

import importlib.util
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm import layers as timm_layers

from jax_ema import test_time_pool
from jax_ema.convert import to_flax
from jax_ema.errors import UserError
from jax_ema.models import create_model
from jax_ema.pretrained_cfgs import PRETRAINED_CFGS
from jax_ema.validate import main as validate_main
from test_forward import _max_rel_err, _randomise_batchnorms, _state_dict, _torch_forward

NUM_CLASSES, SIZE, POOL = 5, 96, (2, 2)  # a 3x3 feature map, a 2x2 window: four positions to avg-max pool
POOL_MODEL, POOL_IMG = 'resnet18.a3_in1k', 168
# our validate reads the image folder through the input pipeline (tf.data): the GPU image has no TensorFlow
needs_tf = pytest.mark.skipif(importlib.util.find_spec('tensorflow') is None, reason='no TensorFlow: tf.data needs it')


def _pair(name, dtype=torch.float32):
    torch.manual_seed(0)
    model = _randomise_batchnorms(timm.create_model(name, num_classes=NUM_CLASSES), seed=1).eval()
    with torch.no_grad():
        head = model.get_classifier()
        head.bias.copy_(torch.randn(NUM_CLASSES))  # timm inits it to zero: a bias wrongly pooled would not show
    variables = to_flax(name, _state_dict(model))
    return timm_layers.TestTimePoolHead(model, original_pool=POOL).eval().to(dtype), variables


@pytest.mark.parametrize(
    'name',
    [
        'resnet18',
        pytest.param('efficientnet_b0', marks=pytest.mark.slow),
        pytest.param('mnasnet_100', marks=pytest.mark.slow),
    ],
)
def test_pooled_logits_are_timms_test_time_pool_head(name):
    """Ours and timm's TestTimePoolHead on the same weights and images (ResNet; EfficientNet's swish conv head;
    MnasNet's relu one); the plain forward differs from them, so the test tells pooling from no pooling."""
    timm_head, variables = _pair(name)
    x = np.random.RandomState(0).randn(2, SIZE, SIZE, 3).astype(np.float32)
    expected = _torch_forward(timm_head, x)
    model = create_model(name, NUM_CLASSES)
    logits = jax.jit(test_time_pool.pooled_apply(model, POOL))(variables, x)
    assert logits.dtype == jnp.float32 and logits.shape == (2, NUM_CLASSES)
    assert _max_rel_err(logits, expected) <= 1e-5
    plain = model.apply(variables, x, train=False)
    assert _max_rel_err(plain, expected) > 1e-2


@pytest.mark.float64
def test_float64_to_roundoff():
    timm_head, variables = _pair('resnet18', torch.float64)
    x = np.random.RandomState(1).randn(2, SIZE, SIZE, 3)
    with jax.enable_x64(True):
        model = create_model('resnet18', NUM_CLASSES, dtype=jnp.float64)
        logits = test_time_pool.pooled_apply(model, POOL)(variables, x)
        assert logits.dtype == jnp.float64
        assert _max_rel_err(logits, _torch_forward(timm_head, x)) <= 1e-10


@pytest.mark.parametrize(
    'name, sizes',
    [
        ('resnet18', (224, 225, 288)),  # the default tag, a1: 224 (its test size 288 does not count, as timm's)
        ('resnet18.a3_in1k', (160, 192)),
        ('efficientnet_b3', (288, 320)),
        ('tf_efficientnet_b0.in1k', (224, 256)),
    ],
)
def test_when_it_applies_and_the_log_line_are_timms(name, sizes, caplog):
    for size in sizes:
        model = timm.create_model(name, num_classes=NUM_CLASSES)  # a fresh one: timm's head takes its classifier
        config = {'input_size': (3, size, size)}
        caplog.clear()
        with caplog.at_level(logging.INFO):
            _, applied = timm_layers.apply_test_time_pool(model, config)
            theirs = [r.getMessage() for r in caplog.records]
            caplog.clear()
            ours = test_time_pool.pool_size(name, config['input_size'])
        assert (ours is not None) == applied, size
        assert [r.getMessage() for r in caplog.records] == theirs
        if applied:
            assert ours == tuple(model.default_cfg['pool_size'])


def test_pool_size_of_every_pretrained_config_is_timms():
    """pool_size derives timm's pretrained pool_size from input_size (stride 32) for every row we carry."""
    for name, row in PRETRAINED_CFGS.items():
        bigger = (3, row.input_size[1] + 1, row.input_size[2] + 1)
        assert test_time_pool.pool_size(name, bigger) == tuple(timm.models.get_pretrained_cfg(name).pool_size), name


@pytest.mark.parametrize('name, kwargs', [('mobilenetv3_small_100', {}), ('resnet18', {'global_pool': 'catavgmax'})])
def test_heads_timm_cannot_pool_are_refused(name, kwargs):
    """timm's TestTimePoolHead fails on MobileNetV3's head and on a catavgmax classifier; ours says so."""
    with pytest.raises(RuntimeError):
        timm_layers.TestTimePoolHead(timm.create_model(name, num_classes=NUM_CLASSES, **kwargs), original_pool=POOL)
    with pytest.raises(UserError, match='--test-pool'):
        test_time_pool.pooled_apply(create_model(name, NUM_CLASSES, **kwargs), POOL)


@pytest.fixture(scope='module')
def pool_world(tmp_path_factory):
    """A resnet18.a3_in1k-shaped timm file (3 classes, random BN) and 168 px images: above a3's
    160 px default, so timm's validate.py --test-pool pools (its 5 x 5 window over a 6 x 6 map)."""
    root = tmp_path_factory.mktemp('test_pool')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for c in range(3):
            (root / split / f'class{c}').mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 90, size=(POOL_IMG, POOL_IMG, 3)) + 80 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f'class{c}' / f'{i}.png')
    torch.manual_seed(0)
    model = _randomise_batchnorms(timm.create_model(POOL_MODEL, num_classes=3), seed=2)
    path = root / 'weights.pth'
    torch.save(model.state_dict(), path)
    return root, path


def _timm_validate(folder, path, test_pool):
    """timm validate.py's steps for these weights at POOL_IMG: its data config (the model's), apply_test_time_pool
    with --test-pool, then crop_pct 1.0; its loader and loss, top-1."""
    model = timm.create_model(POOL_MODEL, num_classes=3)
    timm.models.load_checkpoint(model, str(path))
    config = timm.data.resolve_data_config({'img_size': POOL_IMG}, model=model, use_test_size=True)
    pooled = False
    if test_pool:
        model, pooled = timm_layers.apply_test_time_pool(model, config)
    model.eval()
    loader = timm.data.create_loader(
        timm.data.create_dataset('', root=str(folder / 'validation')), input_size=config['input_size'], batch_size=6,
        use_prefetcher=False, crop_pct=1.0 if pooled else config['crop_pct'], interpolation=config['interpolation'],
        mean=config['mean'], std=config['std'], num_workers=0,
    )  # fmt: skip
    with torch.no_grad():
        images, target = next(iter(loader))
        logits = model(images)
    top1 = timm.utils.accuracy(logits, target, topk=(1,))[0].item()
    return {'loss': torch.nn.functional.cross_entropy(logits, target).item(), 'top1': top1, 'pooled': pooled}


@pytest.mark.slow  # resnet18 compiled at 168 px, timm's loader
@needs_tf
def test_validate_test_pool_scores_as_timms_validate(pool_world, capsys):
    """`python -m jax_ema.validate --test-pool` on a timm file, one checkpoint and a bulk validation (the file
    twice): timm's loss and top-1 with test-time pooling, not those without."""
    folder, path = pool_world
    theirs, plain = _timm_validate(folder, path, True), _timm_validate(folder, path, False)
    assert theirs['pooled'] and abs(theirs['loss'] - plain['loss']) > 1e-3 * abs(plain['loss'])
    flags = [str(folder), '--model', POOL_MODEL, '--img-size', str(POOL_IMG), '--test-pool', '-b', '4', '-j', '1']
    for checkpoints in ([path], [path, path]):
        assert validate_main([*flags, '--checkpoint', *map(str, checkpoints)]) == 0
        captured = capsys.readouterr()
        results = json.loads(captured.out.split('--result\n')[1])
        for ours in results if isinstance(results, list) else [results]:
            assert ours['crop_pct'] == 1.0
            assert ours['top1'] == pytest.approx(theirs['top1'], abs=1e-4)  # timm's accuracy is float32
            assert ours['loss'] == pytest.approx(theirs['loss'], rel=1e-4)
        assert 'Target input size (168, 168) > pretrained default (160, 160), using test time pooling' in captured.err
