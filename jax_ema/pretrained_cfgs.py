"""timm's pretrained configs for the supported models, kept here as data (no torch, no timm at run time).

One row per `architecture.tag` timm 1.0 registers for our architectures (`timm.list_pretrained`), with
the values of `timm.models.get_pretrained_cfg(name)` that training needs: where the weights are on the
Hugging Face hub (`hub_id`, `file`), the data config (`input_size`, `interpolation`, `crop_pct`, `mean`,
`std`; timm's `resolve_data_config` starts from these) and the classifier (`num_classes`, `classifier`,
the module whose `.weight` / `.bias` timm drops when the classes differ), and where timm has them the
evaluation size and crop (`test_input_size`, `test_crop_pct`) its validate.py uses by default. The first
row of each architecture is its default tag, the one `--model resnet50` means. Every row is checked against timm's
registry by parity_tests/test_pretrained_parity.py, which prints the row to paste when timm changes one.
"""

from __future__ import annotations

from typing import NamedTuple

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # timm.data.constants IMAGENET_DEFAULT_*
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # IMAGENET_INCEPTION_*
UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation (the MIIL ImageNet-21k weights)
HUB_FILE = 'model.safetensors'  # what timm downloads first for these repos (no hf_hub_filename override)
CROP_MODE = 'center'  # every row's crop_mode (validate --crop-mode picks squash or border: data/eval_crops.py)


class PretrainedCfg(NamedTuple):
    name: str  # architecture.tag, as `--model` accepts it
    hub_id: str  # Hugging Face repo holding the weights
    file: str  # the weights file in that repo
    input_size: tuple  # (channels, height, width)
    interpolation: str  # 'bilinear' or 'bicubic'
    crop_pct: float  # eval centre crop: resize the short side to img_size / crop_pct, then crop
    mean: tuple
    std: tuple
    num_classes: int  # classes of the file's classifier (0: the file has none)
    classifier: str  # timm module name of the classifier
    test_input_size: tuple | None = None  # timm's evaluation size where it differs (validate.py's default)
    test_crop_pct: float | None = None  # the crop_pct that goes with test_input_size

    @property
    def architecture(self) -> str:
        return self.name.split('.', 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split('.', 1)[1]


def _row(name, size, interpolation, crop_pct, norm, num_classes, classifier, test=(None, None)) -> PretrainedCfg:
    test_size, test_crop_pct = test
    return PretrainedCfg(
        name,
        f'timm/{name}',
        HUB_FILE,
        (3, size, size),
        interpolation,
        crop_pct,
        norm[0],
        norm[1],
        num_classes,
        classifier,
        None if test_size is None else (3, test_size, test_size),
        test_crop_pct,
    )


_ROWS = (
    _row('resnet18.a1_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet18.a2_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet18.a3_in1k', 160, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(224, 0.95)),
    _row('resnet18.fb_ssl_yfcc100m_ft_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet18.fb_swsl_ig1b_ft_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet18.gluon_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet18.tv_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet34.a1_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet34.a2_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet34.a3_in1k', 160, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(224, 0.95)),
    _row('resnet34.bt_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc', test=(288, 0.95)),
    _row('resnet34.gluon_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet34.ra4_e3600_r224_in1k', 224, 'bicubic', 0.9, INCEPTION, 1000, 'fc', test=(288, 1.0)),
    _row('resnet34.tv_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet50.a1_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.a1h_in1k', 176, 'bicubic', 0.9, IMAGENET, 1000, 'fc', test=(224, 1.0)),
    _row('resnet50.a2_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.a3_in1k', 160, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(224, 0.95)),
    _row('resnet50.am_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet50.b1k_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.b2k_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.bamboo', 224, 'bicubic', 1.0, IMAGENET, 0, 'fc'),
    _row('resnet50.bt_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc', test=(288, 0.95)),
    _row('resnet50.c1_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.c2_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.d_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet50.fb_ssl_yfcc100m_ft_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet50.fb_swsl_ig1b_ft_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet50.gluon_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet50.ra_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc', test=(288, 0.95)),
    _row('resnet50.ram_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc', test=(288, 0.95)),
    _row('resnet50.tv2_in1k', 176, 'bilinear', 0.875, IMAGENET, 1000, 'fc', test=(224, 0.965)),
    _row('resnet50.tv_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet101.a1h_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet101.a1_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet101.a2_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet101.a3_in1k', 160, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(224, 0.95)),
    _row('resnet101.gluon_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet101.tv2_in1k', 176, 'bilinear', 0.875, IMAGENET, 1000, 'fc', test=(224, 0.965)),
    _row('resnet101.tv_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet152.a1h_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet152.a1_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet152.a2_in1k', 224, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(288, 1.0)),
    _row('resnet152.a3_in1k', 160, 'bicubic', 0.95, IMAGENET, 1000, 'fc', test=(224, 0.95)),
    _row('resnet152.gluon_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'fc'),
    _row('resnet152.tv2_in1k', 176, 'bilinear', 0.875, IMAGENET, 1000, 'fc', test=(224, 0.965)),
    _row('resnet152.tv_in1k', 224, 'bilinear', 0.875, IMAGENET, 1000, 'fc'),
    _row('efficientnet_b0.ra_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
    _row('efficientnet_b0.ra4_e3600_r224_in1k', 224, 'bicubic', 0.9, INCEPTION, 1000, 'classifier', test=(256, 1.0)),
    _row('efficientnet_b1.ra4_e3600_r240_in1k', 240, 'bicubic', 0.9, INCEPTION, 1000, 'classifier', test=(288, 1.0)),
    _row('efficientnet_b1.ft_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier', test=(256, 1.0)),
    _row('efficientnet_b2.ra_in1k', 256, 'bicubic', 0.875, IMAGENET, 1000, 'classifier', test=(288, 1.0)),
    _row('efficientnet_b3.ra2_in1k', 288, 'bicubic', 0.875, IMAGENET, 1000, 'classifier', test=(320, 1.0)),
    _row('tf_efficientnet_b0.ns_jft_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
    _row('tf_efficientnet_b0.aa_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
    _row('tf_efficientnet_b0.ap_in1k', 224, 'bicubic', 0.875, INCEPTION, 1000, 'classifier'),
    _row('tf_efficientnet_b0.in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
    _row('mnasnet_100.rmsp_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
    _row('mobilenetv3_large_100.ra_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
    _row('mobilenetv3_large_100.miil_in21k', 224, 'bilinear', 0.875, UNIT, 11221, 'classifier'),
    _row('mobilenetv3_large_100.miil_in21k_ft_in1k', 224, 'bilinear', 0.875, UNIT, 1000, 'classifier'),
    _row(
        'mobilenetv3_large_100.ra4_e3600_r224_in1k',
        224,
        'bicubic',
        0.95,
        INCEPTION,
        1000,
        'classifier',
        test=(256, 1.0),
    ),
    _row('mobilenetv3_small_100.lamb_in1k', 224, 'bicubic', 0.875, IMAGENET, 1000, 'classifier'),
)

PRETRAINED_CFGS = {row.name: row for row in _ROWS}
DEFAULT_TAGS = {}  # architecture -> its default tag (its first row)
for _cfg in _ROWS:
    DEFAULT_TAGS.setdefault(_cfg.architecture, _cfg.tag)


def first_conv(architecture: str) -> str:
    """timm's pretrained_cfg 'first_conv' of `architecture`: the module whose weight --in-chans adapts."""
    return 'conv1' if architecture.startswith('resnet') else 'conv_stem'


def split_model_name(name: str) -> tuple[str, str]:
    """'resnet50.a1_in1k' -> ('resnet50', 'a1_in1k'); 'resnet50' -> ('resnet50', ''), as timm's
    split_model_name_tag."""
    architecture, _, tag = name.partition('.')
    return architecture, tag


def tags(architecture: str) -> list[str]:
    """The tags of `architecture` in the table, its default first."""
    return [cfg.tag for cfg in _ROWS if cfg.architecture == architecture]


def lookup(name: str) -> PretrainedCfg | None:
    """The row of `name` ('arch' means its default tag); None when the table has no such row."""
    architecture, tag = split_model_name(name)
    return PRETRAINED_CFGS.get(f'{architecture}.{tag or DEFAULT_TAGS.get(architecture, "")}')
