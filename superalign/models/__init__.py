"""Image classifiers of the paper's section 5, with layers addressable by torchvision's names.

Two families share one interface: :mod:`superalign.models.resnet` (ResNet18/34/50/101/152,
``resnet_small``) and :mod:`superalign.models.vit` (ViT-B/16, ViT-B/32, ViT-L/16, ``vit_small``).
Every function takes the model's frozen config; variables are flax's
``{"params": ..., "batch_stats": ...}`` (ViT has no batch statistics), drawn by :func:`init` or
read from a trained torchvision checkpoint by :func:`from_torchvision`
(:mod:`superalign.models.torchvision`).

    cfg = models.resnet50()
    variables = models.init(cfg, jax.random.key(0))  # or models.from_torchvision(cfg, "r50.pth")
    acts = models.extract(cfg, variables, images, ("layer2.3.bn2", "layer4.2.bn2"))
    # acts["layer4.2.bn2"]: [B, 512], the centre position clamped at 0

:func:`extract` returns the paper's units: for ResNet maps the centre spatial position clamped
at 0, for ViT the CLS token. :func:`intermediates` returns the full recorded tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from superalign.models import resnet, vit
from superalign.models.resnet import (
    ResNetConfig,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnet_small,
)
from superalign.models.torchvision import from_torchvision, state_dict_shapes
from superalign.models.vit import ViTConfig, vit_b16, vit_b32, vit_l16, vit_small

ModelConfig = ResNetConfig | ViTConfig

PRESETS = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "resnet_small": resnet_small,
    "vit_b16": vit_b16,
    "vit_b32": vit_b32,
    "vit_l16": vit_l16,
    "vit_small": vit_small,
}
"""Model constructors by name: ``PRESETS[name](num_classes=..., image_size=...)``."""


def preset(name: str, *, num_classes: int, image_size: int) -> ModelConfig:
    """The config of a named model (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"model must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name](num_classes=num_classes, image_size=image_size)


def _family(config):
    if isinstance(config, ResNetConfig):
        return resnet
    if isinstance(config, ViTConfig):
        return vit
    raise ValueError(f"config must be a ResNetConfig or ViTConfig, got {type(config).__name__}")


def module(config: ModelConfig, capture: Sequence[str] = ()) -> nn.Module:
    """The flax module; ``capture`` lists the layers to record in ``"intermediates"``."""
    capture = check_layers(config, capture)
    if isinstance(config, ResNetConfig):
        return resnet.ResNet(config, capture)
    return vit.ViT(config, capture)


def layer_names(config: ModelConfig) -> tuple[str, ...]:
    """Every addressable layer of the model, in forward order."""
    _family(config)
    return config.layer_names()


def check_layers(config: ModelConfig, layers: Sequence[str]) -> tuple[str, ...]:
    """Return ``layers`` as a tuple, or raise ``ValueError`` listing the valid names."""
    if isinstance(layers, str):
        raise ValueError(f"layers must be a sequence of layer names, got the string {layers!r}")
    return _family(config).check_names(config, layers)


def check_images(config: ModelConfig, images) -> None:
    """Refuse images that are not float32 ``[B, image_size, image_size, 3]`` (NHWC)."""
    _family(config)
    s = config.image_size
    shape, dtype = np.shape(images), getattr(images, "dtype", None)
    if len(shape) != 4 or shape[1:] != (s, s, 3) or shape[0] < 1:
        raise ValueError(
            f"images must be float32 [B, {s}, {s}, 3] (batch, height, width, RGB; normalised), "
            f"got shape {shape}"
        )
    if dtype != jnp.float32:
        raise ValueError(
            f"images must be float32 [B, {s}, {s}, 3] (normalised, not uint8 pixels), got dtype "
            f"{dtype}"
        )


def init(config: ModelConfig, key: jax.Array) -> dict:
    """Fresh variables (``params``, and ``batch_stats`` for ResNet) drawn from ``key``."""
    s = config.image_size
    return dict(module(config).init(key, jnp.zeros((1, s, s, 3), jnp.float32), train=False))


def apply(config: ModelConfig, variables: dict, images: jax.Array) -> jax.Array:
    """Logits ``[B, num_classes]`` in evaluation mode (running batch statistics)."""
    check_images(config, images)
    return module(config).apply(variables, images, train=False)


def _collect(tree, names: set, found: dict) -> None:
    for key, value in tree.items():
        if key in names and isinstance(value, tuple):
            found[key] = value[0]  # sow stores a tuple
        elif hasattr(value, "items"):
            _collect(value, names, found)


def intermediates(
    config: ModelConfig, variables: dict, images: jax.Array, layers: Sequence[str]
) -> tuple[jax.Array, dict]:
    """Logits and the full recorded tensors of ``layers`` (evaluation mode).

    Returns:
      ``(logits [B, num_classes], {name: tensor})``: ResNet maps ``[B, H, W, C]``, ViT tokens
      ``[B, 1 + P, D]`` (token 0 is CLS), ``avgpool`` ``[B, C]``.
    """
    layers = check_layers(config, layers)
    check_images(config, images)
    logits, state = module(config, layers).apply(
        variables, images, train=False, mutable=["intermediates"]
    )
    found: dict = {}
    _collect(dict(state.get("intermediates", {})), set(layers), found)
    return logits, {name: found[name] for name in layers}


def units(config: ModelConfig, name: str, tensor: jax.Array) -> jax.Array:
    """The paper's units of a recorded tensor: ResNet centre position clamped at 0, ViT CLS."""
    return _family(config).units(config, name, tensor)


def extract(config: ModelConfig, variables: dict, images: jax.Array, layers: Sequence[str]) -> dict:
    """Activations of ``layers`` for a batch, ``{name: [B, units]}`` (see :func:`units`).

    Args:
      config: the model.
      variables: its variables (``init`` or trained).
      images: ``[B, image_size, image_size, 3]`` float32, normalised.
      layers: names from :func:`layer_names`.
    """
    _, tensors = intermediates(config, variables, images, layers)
    return {name: units(config, name, t) for name, t in tensors.items()}


def layer_width(config: ModelConfig, name: str) -> int:
    """Number of units :func:`extract` returns for a layer."""
    check_layers(config, (name,))
    return config.layer_width(name)


__all__ = [
    "PRESETS",
    "ModelConfig",
    "ResNetConfig",
    "ViTConfig",
    "apply",
    "check_images",
    "check_layers",
    "extract",
    "from_torchvision",
    "init",
    "intermediates",
    "layer_names",
    "layer_width",
    "module",
    "preset",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet_small",
    "state_dict_shapes",
    "units",
    "vit",
    "vit_b16",
    "vit_b32",
    "vit_l16",
    "vit_small",
]
