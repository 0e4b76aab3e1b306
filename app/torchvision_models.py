"""torchvision's classification models, by name, with their parameter counts; no torch import.

The API checks `model.name` and the parameter limit against this table so it never imports torch.
Generated once from torchvision 0.29 (`torchvision.models.list_models(module=torchvision.models)`,
each model built with `weights=None` at num_classes 10 and 1000); tests/test_bad_input.py compares
the names with the installed torchvision, so a torchvision upgrade that adds or drops a model fails
the suite until this table is regenerated.

Every model's classifier is affine in num_classes, so the count is `base + per_class·num_classes`
exactly (per_class = the read-out's fan-in, + 1 for its bias).
"""

from __future__ import annotations

TORCHVISION_VERSION = "0.29"

# (name, base, per_class): parameters = base + per_class · num_classes.
TORCHVISION_MODELS: tuple[tuple[str, int, int], ...] = (
    ("alexnet", 57003840, 4097),
    ("convnext_base", 87566464, 1025),
    ("convnext_large", 196230336, 1537),
    ("convnext_small", 49454688, 769),
    ("convnext_tiny", 27820128, 769),
    ("densenet121", 6953856, 1025),
    ("densenet161", 26472000, 2209),
    ("densenet169", 12484480, 1665),
    ("densenet201", 18092928, 1921),
    ("efficientnet_b0", 4007548, 1281),
    ("efficientnet_b1", 6513184, 1281),
    ("efficientnet_b2", 7700994, 1409),
    ("efficientnet_b3", 10696232, 1537),
    ("efficientnet_b4", 17548616, 1793),
    ("efficientnet_b5", 28340784, 2049),
    ("efficientnet_b6", 40735704, 2305),
    ("efficientnet_b7", 63786960, 2561),
    ("efficientnet_v2_l", 117234272, 1281),
    ("efficientnet_v2_m", 52858356, 1281),
    ("efficientnet_v2_s", 20177488, 1281),
    ("googlenet", 9929888, 3075),
    ("inception_v3", 24343264, 2818),
    ("maxvit_t", 30407624, 512),
    ("mnasnet0_5", 937512, 1281),
    ("mnasnet0_75", 1889208, 1281),
    ("mnasnet1_0", 3102312, 1281),
    ("mnasnet1_3", 5001256, 1281),
    ("mobilenet_v2", 2223872, 1281),
    ("mobilenet_v3_large", 4202032, 1281),
    ("mobilenet_v3_small", 1517856, 1025),
    ("regnet_x_16gf", 52229536, 2049),
    ("regnet_x_1_6gf", 8277136, 913),
    ("regnet_x_32gf", 105290560, 2521),
    ("regnet_x_3_2gf", 14287552, 1009),
    ("regnet_x_400mf", 5094976, 401),
    ("regnet_x_800mf", 6586656, 673),
    ("regnet_x_8gf", 37651648, 1921),
    ("regnet_y_128gf", 637419894, 7393),
    ("regnet_y_16gf", 80565140, 3025),
    ("regnet_y_1_6gf", 10313430, 889),
    ("regnet_y_32gf", 141333770, 3713),
    ("regnet_y_3_2gf", 17923338, 1513),
    ("regnet_y_400mf", 3903144, 441),
    ("regnet_y_800mf", 5647512, 785),
    ("regnet_y_8gf", 37364472, 2017),
    ("resnet101", 42500160, 2049),
    ("resnet152", 58143808, 2049),
    ("resnet18", 11176512, 513),
    ("resnet34", 21284672, 513),
    ("resnet50", 23508032, 2049),
    ("resnext101_32x8d", 86742336, 2049),
    ("resnext101_64x4d", 81406272, 2049),
    ("resnext50_32x4d", 22979904, 2049),
    ("shufflenet_v2_x0_5", 341792, 1025),
    ("shufflenet_v2_x1_0", 1253604, 1025),
    ("shufflenet_v2_x1_5", 2478624, 1025),
    ("shufflenet_v2_x2_0", 5344996, 2049),
    ("squeezenet1_0", 735424, 513),
    ("squeezenet1_1", 722496, 513),
    ("swin_b", 86743224, 1025),
    ("swin_s", 48837258, 769),
    ("swin_t", 27519354, 769),
    ("swin_v2_b", 86905848, 1025),
    ("swin_v2_s", 48968442, 769),
    ("swin_v2_t", 27582570, 769),
    ("vgg11", 128766336, 4097),
    ("vgg11_bn", 128771840, 4097),
    ("vgg13", 128950848, 4097),
    ("vgg13_bn", 128956736, 4097),
    ("vgg16", 134260544, 4097),
    ("vgg16_bn", 134268992, 4097),
    ("vgg19", 139570240, 4097),
    ("vgg19_bn", 139581248, 4097),
    ("vit_b_16", 85798656, 769),
    ("vit_b_32", 87455232, 769),
    ("vit_h_14", 630764800, 1281),
    ("vit_l_16", 303301632, 1025),
    ("vit_l_32", 305510400, 1025),
    ("wide_resnet101_2", 124837696, 2049),
    ("wide_resnet50_2", 66834240, 2049),
)

_BY_NAME: dict[str, tuple[int, int]] = {name: (base, per) for name, base, per in TORCHVISION_MODELS}

TORCHVISION_NAMES: tuple[str, ...] = tuple(name for name, _, _ in TORCHVISION_MODELS)


def torchvision_parameters(name: str, num_classes: int) -> int | None:
    """Parameter count of torchvision model `name` with `num_classes` outputs; None if unknown."""
    entry = _BY_NAME.get(name)
    if entry is None:
        return None
    base, per_class = entry
    return base + per_class * num_classes
