"""ResNet (torchvision's v1.5 layout) in flax linen, with torchvision's layer names.

Every addressable layer has torchvision's dotted name: ``conv1``, ``bn1`` (stem), per block
``layer{s}.{b}.bn1`` / ``.bn2`` (and ``.bn3`` in bottleneck blocks; batch-norm outputs, before any
ReLU or residual addition) and ``layer{s}.{b}`` (the block output, after the residual ReLU), and
``avgpool`` (``[B, C]``). ``s`` counts stages from 1, ``b`` blocks from 0, so ResNet50 has
``layer2.3.bn2`` and ``layer4.2.bn2``. A layer is recorded (flax ``sow``, collection
``"intermediates"``) only when it is listed in the module's ``capture`` field, so an ordinary
forward pass stores nothing.

:func:`resnet50` is the paper's model; :func:`resnet18`, :func:`resnet34` (basic blocks: two 3x3
convolutions), :func:`resnet101` and :func:`resnet152` complete torchvision's family (trained
weights load with :func:`superalign.models.from_torchvision`); :func:`resnet_small` is the
bottleneck code with one block per stage, a quarter of the width and a 3x3 stride-1 stem without
max-pooling, for small images on a CPU.

Padding follows PyTorch: convolutions pad ``k // 2`` on every side (explicit, so also symmetric
for stride 2, unlike ``"SAME"``), and the stem's 3x3 stride-2 max-pool pads one position of
``-inf`` on every side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from superalign import checks
from superalign.models.capture import check_layer_names, tap

BLOCKS = ("basic", "bottleneck")
"""Residual block kinds: ``"basic"`` (two 3x3 convolutions, ResNet18/34) and ``"bottleneck"``
(1x1, 3x3, 1x1 with four times the channels, ResNet50/101/152)."""


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """A ResNet of basic or bottleneck blocks.

    Attributes:
      stage_sizes: blocks per stage (ResNet50: ``(3, 4, 6, 3)``).
      width: channels of the first stage's 3x3 convolutions (ResNet50: 64); stage ``s`` uses
        ``width * 2**(s-1)`` and outputs that (basic blocks) or four times that (bottleneck).
      num_classes: size of the classifier.
      image_size: height = width of the input images.
      small_stem: a 3x3 stride-1 stem without max-pooling (small images) instead of the 7x7
        stride-2 convolution and 3x3 stride-2 max-pool.
      block: ``"bottleneck"`` or ``"basic"`` (see :data:`BLOCKS`).
    """

    stage_sizes: tuple = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 1000
    image_size: int = 224
    small_stem: bool = False
    block: str = "bottleneck"

    def __post_init__(self):
        if not self.stage_sizes or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.stage_sizes
        ):
            raise ValueError(
                f"stage_sizes must be a non-empty tuple of positive ints, got {self.stage_sizes!r}"
            )
        checks.positive_int("width", self.width)
        checks.positive_int("num_classes", self.num_classes)
        checks.positive_int("image_size", self.image_size)
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")

    @property
    def family(self) -> str:
        return "resnet"

    @property
    def expansion(self) -> int:
        """Output channels of a block per channel of its 3x3 convolution: 1 (basic) or 4."""
        return 4 if self.block == "bottleneck" else 1

    def layer_names(self) -> tuple[str, ...]:
        """Every addressable layer, in forward order."""
        bns = ("bn1", "bn2", "bn3") if self.block == "bottleneck" else ("bn1", "bn2")
        names = ["conv1", "bn1"]
        for s, n_blocks in enumerate(self.stage_sizes, start=1):
            for b in range(n_blocks):
                names += [f"layer{s}.{b}.{bn}" for bn in bns]
                names.append(f"layer{s}.{b}")
        return (*names, "avgpool")

    def layer_width(self, name: str) -> int:
        """Channels of a layer (the units of its centre position)."""
        if name in ("conv1", "bn1"):
            return self.width
        if name == "avgpool":
            return self.width * 2 ** (len(self.stage_sizes) - 1) * self.expansion
        stage = int(name.split(".")[0][len("layer") :])
        inner = self.width * 2 ** (stage - 1)
        # Inside a bottleneck, bn1 and bn2 have the narrow width; a basic block's bn2 is its output.
        if self.block == "bottleneck" and name.endswith((".bn1", ".bn2")):
            return inner
        return self.expansion * inner


def resnet18(num_classes: int = 1000, image_size: int = 224) -> ResNetConfig:
    """ResNet18 (torchvision layout): basic blocks, stages (2, 2, 2, 2), 512 output channels."""
    return ResNetConfig((2, 2, 2, 2), num_classes=num_classes, image_size=image_size, block="basic")


def resnet34(num_classes: int = 1000, image_size: int = 224) -> ResNetConfig:
    """ResNet34 (torchvision layout): basic blocks, stages (3, 4, 6, 3), 512 output channels."""
    return ResNetConfig((3, 4, 6, 3), num_classes=num_classes, image_size=image_size, block="basic")


def resnet50(num_classes: int = 1000, image_size: int = 224) -> ResNetConfig:
    """ResNet50 (torchvision layout): stages (3, 4, 6, 3), width 64, 2048 output channels."""
    return ResNetConfig(num_classes=num_classes, image_size=image_size)


def resnet101(num_classes: int = 1000, image_size: int = 224) -> ResNetConfig:
    """ResNet101 (torchvision layout): bottlenecks, stages (3, 4, 23, 3), 2048 output channels."""
    return ResNetConfig((3, 4, 23, 3), num_classes=num_classes, image_size=image_size)


def resnet152(num_classes: int = 1000, image_size: int = 224) -> ResNetConfig:
    """ResNet152 (torchvision layout): bottlenecks, stages (3, 8, 36, 3), 2048 output channels."""
    return ResNetConfig((3, 8, 36, 3), num_classes=num_classes, image_size=image_size)


def resnet_small(num_classes: int = 10, image_size: int = 16) -> ResNetConfig:
    """One bottleneck per stage, width 16 (512 output channels), small stem: for CPU runs."""
    return ResNetConfig(
        stage_sizes=(1, 1, 1, 1),
        width=16,
        num_classes=num_classes,
        image_size=image_size,
        small_stem=True,
    )


def _batch_norm(train: bool, name: str, zero_init: bool = False) -> nn.BatchNorm:
    # PyTorch's BatchNorm2d: eps 1e-5, running averages updated with momentum 0.1.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )


# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, k: int, stride: int, name: str) -> nn.Conv:
    # Explicit symmetric padding k // 2, as PyTorch's Conv2d(padding=k // 2); flax's "SAME"
    # would pad (0, 1) for stride 2 on even sizes.
    return nn.Conv(
        features, (k, k), (stride, stride), padding=k // 2, use_bias=False,
        kernel_init=_conv_init, name=name,
    )  # fmt: skip


class _Block(nn.Module):
    """The fields of both residual blocks."""

    inner: int  # width of the block's 3x3 convolution
    stride: int
    prefix: str  # the block's torchvision name, e.g. "layer4.2"
    capture: tuple = ()


class BasicBlock(_Block):
    """3x3 (stride here) -> 3x3, projection when the shape changes (ResNet18/34)."""

    @nn.compact
    def __call__(self, x, train: bool):
        p = self.prefix
        y = _conv(self.inner, 3, self.stride, "conv1")(x)
        y = nn.relu(tap(self, f"{p}.bn1", _batch_norm(train, "bn1")(y)))
        y = _conv(self.inner, 3, 1, "conv2")(y)
        y = tap(self, f"{p}.bn2", _batch_norm(train, "bn2")(y))
        if x.shape[-1] != self.inner or self.stride != 1:
            x = _conv(self.inner, 1, self.stride, "downsample_conv")(x)
            x = _batch_norm(train, "downsample_bn")(x)
        return tap(self, p, nn.relu(x + y))


class Bottleneck(_Block):
    """1x1 -> 3x3 (stride here, as in v1.5) -> 1x1 (4x channels), projection when needed."""

    @nn.compact
    def __call__(self, x, train: bool):
        p = self.prefix
        y = _conv(self.inner, 1, 1, "conv1")(x)
        y = nn.relu(tap(self, f"{p}.bn1", _batch_norm(train, "bn1")(y)))
        y = _conv(self.inner, 3, self.stride, "conv2")(y)
        y = nn.relu(tap(self, f"{p}.bn2", _batch_norm(train, "bn2")(y)))
        y = _conv(4 * self.inner, 1, 1, "conv3")(y)
        y = tap(self, f"{p}.bn3", _batch_norm(train, "bn3")(y))
        if x.shape[-1] != 4 * self.inner or self.stride != 1:
            x = _conv(4 * self.inner, 1, self.stride, "downsample_conv")(x)
            x = _batch_norm(train, "downsample_bn")(x)
        return tap(self, p, nn.relu(x + y))


class ResNet(nn.Module):
    """``__call__(images [B, H, W, 3], train) -> logits [B, num_classes]``."""

    config: ResNetConfig
    capture: tuple = ()  # layer names to record in "intermediates"

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.config
        if cfg.small_stem:
            x = nn.Conv(cfg.width, (3, 3), padding=1, use_bias=False, kernel_init=_conv_init,
                        name="stem_conv")(x)  # fmt: skip
        else:
            x = nn.Conv(cfg.width, (7, 7), (2, 2), padding=3, use_bias=False,
                        kernel_init=_conv_init, name="stem_conv")(x)  # fmt: skip
        x = tap(self, "conv1", x)
        x = nn.relu(tap(self, "bn1", _batch_norm(train, "stem_bn")(x)))
        if not cfg.small_stem:
            # flax pads the window with -inf, as PyTorch's MaxPool2d(3, 2, padding=1).
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        block = Bottleneck if cfg.block == "bottleneck" else BasicBlock
        for s, n_blocks in enumerate(cfg.stage_sizes, start=1):
            for b in range(n_blocks):
                x = block(
                    inner=cfg.width * 2 ** (s - 1),
                    stride=2 if (b == 0 and s > 1) else 1,
                    prefix=f"layer{s}.{b}",
                    capture=tuple(self.capture),
                    name=f"layer{s}_{b}",
                )(x, train)
        x = tap(self, "avgpool", jnp.mean(x, axis=(1, 2)))
        return nn.Dense(cfg.num_classes, name="fc")(x)


def centre(x: jax.Array) -> jax.Array:
    """The centre spatial position of ``[B, H, W, C]`` maps (index ``H // 2, W // 2``, as
    ``x[:, :, H // 2, W // 2]`` in PyTorch's layout), clamped at 0: ``[B, C]``."""
    return jnp.maximum(x[:, x.shape[1] // 2, x.shape[2] // 2, :], 0.0)


def units(config: ResNetConfig, name: str, x: jax.Array) -> jax.Array:
    """The units of a recorded layer: the centre position for maps, ``avgpool`` as it is."""
    del config
    return x if name == "avgpool" else centre(x)


def check_names(config: ResNetConfig, layers: Sequence[str]) -> tuple[str, ...]:
    model = f"ResNet(stage_sizes={config.stage_sizes})"
    return check_layer_names(layers, config.layer_names(), model)
