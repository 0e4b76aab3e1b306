"""Spec → model (edgetune/nets.py): every spec type builds, inits are what they claim, bad specs are
refused with the field named."""

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from app.schemas import CNNSpec, ConvBlockSpec, InitSpec, MLPSpec, RecommendationSpec
from app.schemas import TorchvisionSpec as TVSpec
from edgetune.nets import EdgeNet, SpecError, build_model, count_parameters, layer_infos
from worker.order import couplings, measure

ACTIVATIONS = ["tanh", "relu", "gelu", "silu", "linear"]
SCHEMES = ["edge", "torch-default", "kaiming", "xavier"]
GREY = (1, 28, 28)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


# --- MLP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_mlp_activation_and_init_builds(activation, scheme):
    torch.manual_seed(0)
    spec = MLPSpec(hidden=[32, 16], activation=activation, init=InitSpec(scheme=scheme))
    model = build_model(spec, GREY, 10)
    assert isinstance(model, EdgeNet)
    logits = model(torch.rand(5, *GREY))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()
    infos = layer_infos(model)
    assert [(i.fan_in, i.fan_out, i.activation) for i in infos] == [
        (784, 32, activation),
        (32, 16, activation),
    ]
    assert count_parameters(model) == 784 * 32 + 32 * 16 + 16 * 10 + 10


def test_the_papers_network():
    torch.manual_seed(0)
    model = build_model(MLPSpec(), GREY, 10)
    assert isinstance(model, EdgeNet)
    (hidden,) = model.layers
    assert isinstance(hidden, nn.Linear) and hidden.bias is None
    assert (hidden.in_features, hidden.out_features) == (784, 784)
    (info,) = layer_infos(model)
    assert info.square and info.kind == "linear"
    J, J0 = couplings(_params(model), [info])
    assert float(J[0]) == pytest.approx(0.5, rel=0.01)
    assert abs(float(J0[0])) < 0.05
    _assert_glorot_readout(model.readout)


def _assert_glorot_readout(readout: nn.Linear) -> None:
    w = readout.weight.detach()
    bound = math.sqrt(6 / (readout.in_features + readout.out_features))
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.95 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    if readout.bias is not None:
        assert torch.count_nonzero(readout.bias) == 0


@pytest.mark.parametrize(
    "scheme, activation, expected_J",
    [
        ("edge", "tanh", 1.3),  # the spec's J
        ("kaiming", "tanh", 5 / 3),  # He: J = gain; tanh's gain is 5/3
        ("kaiming", "relu", math.sqrt(2)),
        ("torch-default", "tanh", 1 / math.sqrt(3)),  # U(±1/√fan_in)
    ],
)
def test_init_schemes_give_their_known_J(scheme, activation, expected_J):
    torch.manual_seed(1)
    spec = MLPSpec(
        hidden=[400, 300],
        activation=activation,
        hidden_bias=True,
        init=InitSpec(scheme=scheme, J=1.3),
    )
    model = build_model(spec, (500,), 10)
    J, _ = couplings(_params(model), layer_infos(model))
    assert J.tolist() == pytest.approx([expected_J] * 2, rel=0.02)
    if scheme != "torch-default":
        assert isinstance(model, EdgeNet)
        _assert_glorot_readout(model.readout)
        assert all(torch.count_nonzero(layer.bias) == 0 for layer in model.layers)


def test_xavier_init_has_the_glorot_std():
    torch.manual_seed(2)
    spec = MLPSpec(hidden=[300], activation="tanh", init=InitSpec(scheme="xavier"))
    model = build_model(spec, (500,), 10)
    w = model.layers[0].weight.detach()
    assert float(w.std()) == pytest.approx(5 / 3 * math.sqrt(2 / 800), rel=0.02)


def test_same_seed_same_model():
    spec = MLPSpec(hidden=[20])
    torch.manual_seed(5)
    a = build_model(spec, (8,), 3)
    torch.manual_seed(5)
    b = build_model(spec, (8,), 3)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_trace_returns_each_layers_input_and_preactivation():
    torch.manual_seed(0)
    model = build_model(MLPSpec(hidden=[6, 5], activation="tanh"), (4,), 3)
    assert isinstance(model, EdgeNet)
    x = torch.randn(2, 4)
    logits, inputs, preacts = model(x, trace=True)
    assert [t.shape for t in inputs] == [(2, 4), (2, 6)]
    assert [t.shape for t in preacts] == [(2, 6), (2, 5)]
    assert torch.allclose(inputs[1], torch.tanh(preacts[0]))
    assert torch.allclose(preacts[1], model.layers[1](inputs[1]))
    assert torch.allclose(logits, model(x))


# --- CNN ----------------------------------------------------------------------------------------


def test_cnn_with_pooling_stride_and_dense_hidden():
    torch.manual_seed(0)
    spec = CNNSpec(
        blocks=[
            ConvBlockSpec(channels=8, kernel=3, pool=2),
            ConvBlockSpec(channels=16, kernel=5, stride=2),
            ConvBlockSpec(channels=16, kernel=3, pool=2),
        ],
        hidden=[32],
        init=InitSpec(scheme="edge", J=1.4),
    )
    model = build_model(spec, GREY, 10)
    assert isinstance(model, EdgeNet)
    assert model(torch.rand(3, *GREY)).shape == (3, 10)
    infos = layer_infos(model)
    # 28 →conv3→ 28 →pool2→ 14 →conv5/s2→ 7 →conv3→ 7 →pool2→ 3: 16·3·3 = 144 features.
    assert [(i.kind, i.fan_in, i.fan_out) for i in infos] == [
        ("conv", 9, 8),
        ("conv", 200, 16),
        ("conv", 144, 16),
        ("linear", 144, 32),
    ]
    assert [i.square for i in infos] == [False, False, False, False]
    out = measure(model, _params(model), torch.rand(16, *GREY), infos)
    assert out["chi"].shape == (4,) and torch.isfinite(out["chi"]).all()
    # Layers 1 and 2 have 3200 and 2304 weights: J within a few percent of the spec's.
    assert out["J"][1:].tolist() == pytest.approx([1.4] * 3, rel=0.05)


def test_cnn_without_dense_hidden_reads_out_from_the_feature_map():
    torch.manual_seed(0)
    spec = CNNSpec(blocks=[ConvBlockSpec(channels=4, kernel=2), ConvBlockSpec(channels=4)])
    model = build_model(spec, (3, 9, 9), 5)
    assert isinstance(model, EdgeNet)
    assert model(torch.rand(2, 3, 9, 9)).shape == (2, 5)
    # An even kernel with padding k//2 grows the map (9 → 10), so 4 → 4 with kernel 2 would not
    # be square; kernel 3 keeps 10×10.
    assert model.readout.in_features == 4 * 10 * 10
    assert [i.square for i in layer_infos(model)] == [False, True]


def test_even_kernel_conv_is_not_square():
    spec = CNNSpec(blocks=[ConvBlockSpec(channels=2, kernel=2)] * 2)
    infos = layer_infos(build_model(spec, (2, 6, 6), 2))
    assert [i.square for i in infos] == [False, False]


# --- torchvision --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "googlenet"]
)
def test_torchvision_models_build_on_grey_28x28(name):
    torch.manual_seed(0)
    model = build_model(TVSpec(name=name), GREY, 10)
    model.train()
    logits = model(torch.rand(2, *GREY))
    # Training mode matters: GoogLeNet returns auxiliary logits there unless they are off.
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    infos = layer_infos(model)
    names = dict(model.named_parameters())
    assert infos and all(i.weight in names for i in infos)
    readout = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    assert names[infos[-1].weight] is not readout.weight
    out = measure(model, _params(model), torch.rand(2, *GREY), infos)
    assert set(out) == {"J", "J0"} and out["J"].shape == (len(infos),)


def test_torchvision_num_classes_and_colour_input():
    model = build_model(TVSpec(name="resnet18", num_classes=7), (3, 32, 32), 10)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    first = layer_infos(model)[0]
    assert first.kind == "conv" and first.fan_in == 3 * 7 * 7


# --- malformed specs ----------------------------------------------------------------------------

_TAGS = {"mlp", "cnn", "torchvision"}


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"model": {"type": "mlp", "hiden": [10]}}, "model.hiden"),
        ({"model": {"type": "mlp", "hidden": "wide"}}, "model.hidden"),
        ({"model": {"type": "mlp", "hidden": [64, -5]}}, "model.hidden.1"),
        ({"model": {"type": "mlp", "hidden": [100_000]}}, "model.hidden.0"),
        ({"model": {"type": "mlp", "hidden": []}}, "model.hidden"),
        ({"model": {"type": "mlp", "activation": "sigmoid"}}, "model.activation"),
        ({"model": {"type": "transformer"}}, "model"),
        ({"model": {"type": "mlp", "init": {"scheme": "orthogonal"}}}, "model.init.scheme"),
        ({"model": {"type": "mlp", "init": {"J": 0}}}, "model.init.J"),
        (
            {"model": {"type": "cnn", "blocks": [{"channels": 4, "kernel": 0}]}},
            "model.blocks.0.kernel",
        ),
        ({"model": {"type": "cnn", "blocks": []}}, "model.blocks"),
        ({"model": {"type": "torchvision", "name": "../os"}}, "model.name"),
        ({"optimizer": {"learning_rate": float("nan")}}, "optimizer.learning_rate"),
        ({"optimizer": {"learning_rate": float("inf")}}, "optimizer.learning_rate"),
        ({"optimizer": {"learning_rate": "NaN"}}, "optimizer.learning_rate"),
        ({"optimizer": {"learning_rate": -0.1}}, "optimizer.learning_rate"),
        ({"optimizer": {"momentum": 1.0}}, "optimizer.momentum"),
        ({"optimizer": {"batch_size": 0}}, "optimizer.batch_size"),
        ({"optimizer": {"batch_size": 3.5}}, "optimizer.batch_size"),
        ({"optimizer": {"type": "adam"}}, "optimizer.type"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name"),
        ({"dataset": {"validation_fraction": 1.0}}, "dataset.validation_fraction"),
        ({"dataset": {"path": "a\x00b"}}, "dataset.path"),
        ({"budget": {"epochs": -1}}, "budget.epochs"),
        ({"seed": -1}, "seed"),
        ({"verify": "maybe"}, "verify"),
        ({"verify": 1}, "verify"),
        ({"budget": {"epochs": True}}, "budget.epochs"),
        ({"model": {"type": "mlp", "output_bias": "yes"}}, "model.output_bias"),
    ],
)
def test_malformed_spec_names_the_field(spec, field):
    with pytest.raises(ValidationError) as exc:
        # model and dataset are required; the valid defaults leave the one error in `spec`.
        RecommendationSpec.model_validate({"model": {}, "dataset": {}, **spec})
    errors = exc.value.errors()
    assert len(errors) == 1
    # pydantic puts the union's tag in the location ("model.mlp.hidden"); the field is the rest.
    loc = ".".join(str(part) for part in errors[0]["loc"] if part not in _TAGS)
    assert loc == field


@pytest.mark.parametrize(
    "model_spec, input_shape, field",
    [
        (TVSpec(name="resnet19"), GREY, "model.name"),
        (TVSpec(name="vgg11"), GREY, "model.name"),  # pools 28×28 away
        (TVSpec(name="vit_b_16"), GREY, "model.name"),  # wants 224×224
        (TVSpec(name="resnet18"), (64,), "model.type"),
        (
            CNNSpec(blocks=[ConvBlockSpec(channels=4, pool=4), ConvBlockSpec(channels=4, pool=8)]),
            GREY,
            "model.blocks.1",
        ),
        (CNNSpec(blocks=[ConvBlockSpec(channels=4)]), (784,), "model.type"),
    ],
    ids=["unknown-name", "too-small-vgg", "vit-224", "tv-flat", "cnn-vanishes", "cnn-flat"],
)
def test_unbuildable_spec_raises_spec_error_naming_the_field(model_spec, input_shape, field):
    with pytest.raises(SpecError) as exc:
        build_model(model_spec, input_shape, 10)
    assert exc.value.field == field
    assert str(exc.value).startswith(field + ":")
