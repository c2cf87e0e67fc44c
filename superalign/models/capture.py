"""Recording named layers: the one rule every model here follows.

A module with a ``capture`` field (a tuple of layer names) records a layer's output in flax's
``"intermediates"`` collection (``sow``) only when the layer's name is listed, so an ordinary
forward pass stores nothing. :func:`superalign.models.intermediates` reads the collection.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn


def tap(module: nn.Module, name: str, x):
    """Record ``x`` under ``name`` when ``module.capture`` lists it; return ``x`` unchanged.

    Args:
      module: the calling flax module (inside its ``__call__``); has a ``capture`` field.
      name: the layer's torchvision name, e.g. ``"layer4.2.bn2"``.
      x: the layer's output, any shape.

    Returns:
      ``x``, so a call can wrap an expression in place.
    """
    if name in module.capture:
        module.sow("intermediates", name, x)
    return x


def check_layer_names(layers: Sequence[str], valid: Sequence[str], model: str) -> tuple[str, ...]:
    """``layers`` as a tuple, every name checked against a model's ``valid`` layer names.

    Args:
      layers: the requested layer names.
      valid: every addressable layer of the model.
      model: the model as the error names it, e.g. ``"ViT(depth=12)"``.

    Raises:
      ValueError: a name that is not in ``valid``, with the valid names.
    """
    for name in layers:
        if name not in valid:
            raise ValueError(
                f"layers: unknown layer {name!r} for {model}; valid layers are {list(valid)}"
            )
    return tuple(layers)
