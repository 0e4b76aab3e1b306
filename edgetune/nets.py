"""Spec → torch.nn.Module. Declarative only: no user code is ever executed or unpickled.

Shared by the worker's probes and by pipelines (`edgetune.build_model`), so that the model a
pipeline trains is the module the probes trained: same architecture, init and initial weights.

Our own architectures (MLP, CNN) are built as a chain of hidden layers, each a weight layer followed
by an activation, then a read-out. That structure is what the order parameters need: per hidden
layer its weight, its fan-in, its activation and its pre-activations on data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import replace_all_batch_norm_modules_

from edgetune import plugins
from edgetune.schemas import (
    MODEL_PLUGINS,
    CNNSpec,
    InitSpec,
    MLPSpec,
    ModelSpec,
    PluginModelSpec,
    RecommendationSpec,
    TorchvisionSpec,
    known_shape,
)


class SpecError(ValueError):
    """A spec that is well-formed but cannot be built; `field` names the offending spec field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LayerInfo:
    """One hidden layer as the order parameters see it."""

    index: int
    weight: str  # parameter name in model.named_parameters()
    kind: Literal["linear", "conv"]
    fan_in: int  # conv: C_in·k_h·k_w
    fan_out: int  # conv: C_out·k_h·k_w is not used; C_out
    activation: str | None  # None where the activation is not known (torchvision models)
    # Whether the layer maps a space onto itself (same width in and out; conv: same channels,
    # stride 1), so it can be iterated as x ← φ(W x) (arXiv 1909.05176).
    square: bool


def activation_fn(name: str, h: Tensor) -> Tensor:
    if name == "tanh":
        return torch.tanh(h)
    if name == "relu":
        return F.relu(h)
    if name == "gelu":
        return F.gelu(h)
    if name == "silu":
        return F.silu(h)
    if name == "linear":
        return h
    raise ValueError(f"unknown activation {name!r}")


def activation_derivative(name: str, h: Tensor) -> Tensor:
    """φ'(h) in closed form (cheaper than autograd, and usable under vmap)."""
    if name == "tanh":
        t = torch.tanh(h)
        return 1 - t * t
    if name == "relu":
        return (h > 0).to(h.dtype)
    if name == "gelu":  # exact (erf) GELU: Φ(h) + h·φ(h)
        cdf = 0.5 * (1 + torch.erf(h / math.sqrt(2)))
        pdf = torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)
        return cdf + h * pdf
    if name == "silu":
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s))
    if name == "linear":
        return torch.ones_like(h)
    raise ValueError(f"unknown activation {name!r}")


def _conv_keeps_size(conv: nn.Conv2d) -> bool:
    """Whether the conv maps an H×W map to H×W: stride 1 and padding = dilation·(k−1)/2.

    An even kernel with padding k//2 grows the map by one each step, so it cannot be iterated.
    """
    if conv.stride != (1, 1):
        return False
    padding = conv.padding
    if isinstance(padding, str):  # "same" or "valid" (no padding)
        return padding == "same" or conv.kernel_size == (1, 1)
    return all(
        2 * int(p) == d * (k - 1)
        for p, d, k in zip(padding, conv.dilation, conv.kernel_size, strict=True)
    )


class EdgeNet(nn.Module):
    """Hidden layers (conv blocks, then dense) → read-out; every hidden layer is W·x (+b) → φ."""

    def __init__(
        self,
        layers: list[nn.Module],
        pools: list[int],
        n_conv: int,
        readout: nn.Linear,
        activation: str,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.pools = list(pools)
        self.n_conv = n_conv
        self.readout = readout
        self.activation = activation

    def forward(
        self, x: Tensor, trace: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor], list[Tensor]]:
        """Logits; with `trace`, also each hidden layer's input and pre-activation."""
        inputs: list[Tensor] = []
        preacts: list[Tensor] = []
        if self.n_conv == 0:
            x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            if i == self.n_conv and i > 0:
                x = x.flatten(1)
            h = layer(x)
            if trace:
                inputs.append(x)
                preacts.append(h)
            x = activation_fn(self.activation, h)
            if self.pools[i] > 1:
                x = F.max_pool2d(x, self.pools[i])
        if self.n_conv == len(self.layers) and self.n_conv > 0:
            x = x.flatten(1)
        logits = self.readout(x)
        if trace:
            return logits, inputs, preacts
        return logits

    def layer_infos(self) -> list[LayerInfo]:
        infos = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.Conv2d):
                k_h, k_w = layer.kernel_size
                infos.append(
                    LayerInfo(
                        index=i,
                        weight=f"layers.{i}.weight",
                        kind="conv",
                        fan_in=layer.in_channels * k_h * k_w,
                        fan_out=layer.out_channels,
                        activation=self.activation,
                        square=layer.in_channels == layer.out_channels
                        and _conv_keeps_size(layer)
                        and self.pools[i] == 1,
                    )
                )
            else:
                assert isinstance(layer, nn.Linear)
                infos.append(
                    LayerInfo(
                        index=i,
                        weight=f"layers.{i}.weight",
                        kind="linear",
                        fan_in=layer.in_features,
                        fan_out=layer.out_features,
                        activation=self.activation,
                        square=layer.in_features == layer.out_features,
                    )
                )
        return infos


# GELU and SiLU have no gain of their own in torch.nn.init; they are ReLU-like, so use ReLU's.
_INIT_NONLINEARITY: dict[str, Literal["tanh", "relu", "linear"]] = {
    "tanh": "tanh",
    "relu": "relu",
    "gelu": "relu",
    "silu": "relu",
    "linear": "linear",
}


def _apply_init(model: EdgeNet, init: InitSpec) -> None:
    if init.scheme == "torch-default":
        return
    for layer in model.layers:
        assert isinstance(layer, nn.Linear | nn.Conv2d)
        w = layer.weight
        if init.scheme == "edge":
            fan_in = w[0].numel()
            nn.init.normal_(w, 0.0, init.J / math.sqrt(fan_in))
        elif init.scheme == "kaiming":
            nonlinearity = _INIT_NONLINEARITY[model.activation]
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity=nonlinearity)
        else:
            gain = nn.init.calculate_gain(_INIT_NONLINEARITY[model.activation])
            nn.init.xavier_normal_(w, gain=gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    # The paper's read-out: Glorot uniform, zero bias (used for every non-default scheme).
    nn.init.xavier_uniform_(model.readout.weight)
    if model.readout.bias is not None:
        nn.init.zeros_(model.readout.bias)


def _build_mlp(spec: MLPSpec, input_shape: tuple[int, ...], num_classes: int) -> EdgeNet:
    width = math.prod(input_shape)
    layers: list[nn.Module] = []
    for h in spec.hidden:
        layers.append(nn.Linear(width, h, bias=spec.hidden_bias))
        width = h
    readout = nn.Linear(width, num_classes, bias=spec.output_bias)
    model = EdgeNet(layers, [1] * len(layers), 0, readout, spec.activation)
    _apply_init(model, spec.init)
    return model


def _build_cnn(spec: CNNSpec, input_shape: tuple[int, ...], num_classes: int) -> EdgeNet:
    if len(input_shape) != 3:
        raise SpecError(
            "model.type", f"a CNN needs image input (C, H, W); the data is {input_shape}"
        )
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    pools: list[int] = []
    for i, block in enumerate(spec.blocks):
        layers.append(
            nn.Conv2d(
                channels,
                block.channels,
                block.kernel,
                stride=block.stride,
                padding=block.kernel // 2,
                bias=spec.hidden_bias,
            )
        )
        pad = block.kernel // 2
        height = (height + 2 * pad - block.kernel) // block.stride + 1
        width = (width + 2 * pad - block.kernel) // block.stride + 1
        height, width = height // block.pool, width // block.pool
        if height < 1 or width < 1:
            raise SpecError(
                f"model.blocks.{i}",
                f"the feature map vanishes at this block for input {tuple(input_shape)}",
            )
        pools.append(block.pool)
        channels = block.channels
    features = channels * height * width
    for h in spec.hidden:
        layers.append(nn.Linear(features, h, bias=spec.hidden_bias))
        pools.append(1)
        features = h
    readout = nn.Linear(features, num_classes, bias=spec.output_bias)
    model = EdgeNet(layers, pools, len(spec.blocks), readout, spec.activation)
    _apply_init(model, spec.init)
    return model


class TorchvisionNet(nn.Module):
    """A torchvision classifier with an input adapter: grey images are repeated to 3 channels."""

    def __init__(self, net: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.net = net
        self.in_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        out: Tensor = self.net(x)
        return out

    def layer_infos(self) -> list[LayerInfo]:
        return foreign_layer_infos(self)


class PluginNet(nn.Module):
    """A plugin's module (an `edgetune.models` entry point), as the probes train it: BatchNorm
    layers on batch statistics. Its hidden layers are its Linear and Conv2d layers in module
    order, the last its read-out, as for torchvision models."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out

    def layer_infos(self) -> list[LayerInfo]:
        return foreign_layer_infos(self)


def foreign_layer_infos(model: nn.Module) -> list[LayerInfo]:
    """The hidden layers of a module edgetune did not build: every Linear and Conv2d in module
    order but the last (the read-out); their activations are unknown."""
    weighted = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    infos = []
    # The last Linear is the read-out, not part of the iterated map.
    for i, (name, m) in enumerate(weighted[:-1]):
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            infos.append(
                LayerInfo(
                    i,
                    f"{name}.weight",
                    "conv",
                    fan_in,
                    m.out_channels,
                    None,
                    m.in_channels == m.out_channels and _conv_keeps_size(m),
                )
            )
        else:
            assert isinstance(m, nn.Linear)
            infos.append(
                LayerInfo(
                    i,
                    f"{name}.weight",
                    "linear",
                    m.in_features,
                    m.out_features,
                    None,
                    m.in_features == m.out_features,
                )
            )
    return infos


_AUX_LOGIT_MODELS = ("googlenet", "inception_v3")


def torchvision_classifiers() -> list[str]:
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _build_torchvision(
    spec: TorchvisionSpec, input_shape: tuple[int, ...], num_classes: int
) -> TorchvisionNet:
    import torchvision.models

    names = torchvision_classifiers()
    if spec.name not in names:
        raise SpecError(
            "model.name",
            f"{spec.name!r} is not a torchvision classification model; "
            f"known: {', '.join(names[:12])}, … ({len(names)} in all)",
        )
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise SpecError(
            "model.type", f"torchvision models need 1- or 3-channel images, not {input_shape}"
        )
    # GoogLeNet and Inception v3 return (logits, aux logits…) in training mode unless their
    # auxiliary heads are off; the probes need plain logits, and the heads are not the model.
    # init_weights=True is their current default, stated to silence a FutureWarning.
    extra = {"aux_logits": False, "init_weights": True} if spec.name in _AUX_LOGIT_MODELS else {}
    try:
        net = torchvision.models.get_model(
            spec.name, weights=None, num_classes=num_classes, **extra
        )
    except (TypeError, ValueError) as exc:
        raise SpecError("model.name", f"cannot build {spec.name!r}: {exc}") from exc
    model = TorchvisionNet(net, input_shape[0])
    # Many torchvision models cannot take small images (VGG and AlexNet pool the map away, ViT
    # wants exactly 224×224). One eval-mode forward of a single example finds out here, as a
    # spec error, instead of as a crash in the middle of a probe. Eval mode draws no random
    # numbers and leaves batch-norm statistics alone, so the built model is unchanged.
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise SpecError(
            "model.name", f"{spec.name!r} cannot take input of shape {input_shape}: {exc}"
        ) from exc
    finally:
        model.train()
    return model


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the model for `spec`, with the spec's init, on the current default device."""
    if isinstance(spec, MLPSpec):
        return _build_mlp(spec, input_shape, num_classes)
    if isinstance(spec, CNNSpec):
        return _build_cnn(spec, input_shape, num_classes)
    if isinstance(spec, PluginModelSpec):
        return _build_plugin(spec, input_shape, num_classes)
    classes = spec.num_classes or num_classes
    return _build_torchvision(spec, input_shape, classes)


def _build_plugin(
    spec: PluginModelSpec, input_shape: tuple[int, ...], num_classes: int
) -> PluginNet:
    """The plugin's factory, looked up in the edgetune.models group only, called with the spec's
    JSON kwargs."""
    try:
        factory = plugins.load(MODEL_PLUGINS, spec.name)
    except plugins.PluginNotFound as exc:
        raise SpecError("model.name", str(exc)) from exc
    try:
        net = factory(input_shape=tuple(input_shape), num_classes=num_classes, **spec.kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError("model.kwargs", f"plugin {spec.name!r} refused them: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise SpecError(
            "model.name", f"plugin {spec.name!r} returned {type(net).__name__}, not a torch module"
        )
    model = PluginNet(net)
    # The probes train batch statistics (vmap cannot update running averages); the plugin's
    # module is then trained that way wherever it is built, by a probe or by a pipeline.
    replace_all_batch_norm_modules_(model)
    return model


def layer_infos(model: nn.Module) -> list[LayerInfo]:
    if isinstance(model, EdgeNet | TorchvisionNet | PluginNet):
        return model.layer_infos()
    raise TypeError(f"not an edgetune model: {type(model).__name__}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Probe i of a job with seed s draws its initial weights with seed s·1000 + i (worker/plan.py).
# The first probe's, s·1000, is the model a pipeline gets and the one the engine measures at
# step 0 (worker/recommend.py).
PROBE_SEEDS_PER_JOB = 1000


def first_probe_seed(seed: int) -> int:
    return seed * PROBE_SEEDS_PER_JOB


def seeded_model(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """The model a probe starts from (worker/probe.py init_model does the same): built on the CPU
    with only the CPU generator seeded, so it is the same on every machine and the caller's RNG
    state is left as it was. BatchNorm layers use batch statistics (no running averages), which
    is what the probes' vmapped training needs, so a pipeline trains them the same way."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.random.default_generator.manual_seed(seed)
        model = build_model(spec, input_shape, num_classes)
    if isinstance(model, TorchvisionNet):
        replace_all_batch_norm_modules_(model)
    return model


def probed_model(
    spec: RecommendationSpec,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """The module the job's first probe trained, its initial weights included, on the CPU.

    The input shape and class count come from the dataset spec where it fixes them (mnist,
    fashion-mnist, digits, synthetic); for data whose shape only its files know (npz,
    image-folder), pass them as the worker loads them."""
    known = known_shape(spec.dataset)
    shape = input_shape or (known[0] if known else None)
    classes = num_classes or (known[1] if known else None)
    if shape is None or classes is None:
        raise ValueError(
            f"dataset {spec.dataset.name!r}: its input shape and classes are only known from its "
            "files; pass input_shape=(C, H, W) or (features,) and num_classes="
        )
    return seeded_model(spec.model, tuple(shape), classes, first_probe_seed(spec.seed))
