"""Trained torchvision checkpoints as flax variables of :mod:`superalign.models`.

:func:`from_torchvision` reads a state dict of torchvision's ``resnet18`` ... ``resnet152`` or
``vit_b_16`` / ``vit_b_32`` / ``vit_l_16`` (published weights or a ``torch.save`` of one's own
run) and returns the ``{"params": ..., "batch_stats": ...}`` of the matching config, so that
:func:`superalign.models.apply` and :func:`superalign.models.extract` compute what torchvision's
evaluation-mode forward pass computes:

    cfg = models.resnet50()
    variables = models.from_torchvision(cfg, "resnet50-11ad3fa6.pth")
    acts = models.extract(cfg, variables, images, ("layer2.3.bn2", "layer4.2.bn2"))

The conversion, per torchvision name: convolutions ``[O, I, kh, kw]`` -> flax ``[kh, kw, I, O]``;
linear weights ``[O, I]`` -> ``[I, O]``; batch-norm ``weight``/``bias`` -> ``scale``/``bias`` and
``running_mean``/``running_var`` -> ``batch_stats`` ``mean``/``var`` (``num_batches_tracked`` is
dropped); a ViT block's packed ``self_attention.in_proj_weight`` ``[3D, D]`` -> the ``query``,
``key``, ``value`` kernels ``[D, heads, D / heads]`` of flax's ``MultiHeadDotProductAttention``,
``out_proj.weight`` ``[D, D]`` -> ``out`` kernel ``[heads, D / heads, D]``.
:func:`state_dict_shapes` lists the names and shapes a config expects; a checkpoint of another
architecture is refused with the first key that does not fit.

Only :func:`from_torchvision` on a ``.pth``/``.pt`` file needs PyTorch (imported there);
``.safetensors`` files are read with ``safetensors.numpy``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from superalign.models import resnet, vit

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
"""Keys under which training scripts commonly save the state dict; unwrapped in this order."""

_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, and torch.compile

# A conversion: torchvision name -> (kind, flax path(s) as tuples starting with the collection).
# Kinds: "copy", "conv" (OIHW -> HWIO), "linear" (transpose), "in_proj_weight" / "in_proj_bias"
# (split into query, key, value), "out_proj" (transpose and split the input axis into heads).


def _resnet_table(config: resnet.ResNetConfig) -> dict:
    table = {}

    def bn(torch_name, flax_path):
        for t, f in (("weight", "scale"), ("bias", "bias")):
            table[f"{torch_name}.{t}"] = ("copy", (("params", *flax_path, f),))
        for t, f in (("running_mean", "mean"), ("running_var", "var")):
            table[f"{torch_name}.{t}"] = ("copy", (("batch_stats", *flax_path, f),))

    table["conv1.weight"] = ("conv", (("params", "stem_conv", "kernel"),))
    bn("bn1", ("stem_bn",))
    n_convs = 3 if config.block == "bottleneck" else 2
    width = config.width
    for s, n_blocks in enumerate(config.stage_sizes, start=1):
        for b in range(n_blocks):
            t, f = f"layer{s}.{b}", f"layer{s}_{b}"
            for i in range(1, n_convs + 1):
                table[f"{t}.conv{i}.weight"] = ("conv", (("params", f, f"conv{i}", "kernel"),))
                bn(f"{t}.bn{i}", (f, f"bn{i}"))
            out = config.expansion * config.width * 2 ** (s - 1)
            if b == 0 and (s > 1 or width != out):  # the same rule as the flax blocks
                table[f"{t}.downsample.0.weight"] = (
                    "conv",
                    (("params", f, "downsample_conv", "kernel"),),
                )
                bn(f"{t}.downsample.1", (f, "downsample_bn"))
            width = out
    table["fc.weight"] = ("linear", (("params", "fc", "kernel"),))
    table["fc.bias"] = ("copy", (("params", "fc", "bias"),))
    return table


def _vit_table(config: vit.ViTConfig) -> dict:
    table = {
        "class_token": ("copy", (("params", "class_token"),)),
        "conv_proj.weight": ("conv", (("params", "patch_embedding", "kernel"),)),
        "conv_proj.bias": ("copy", (("params", "patch_embedding", "bias"),)),
        "encoder.pos_embedding": ("copy", (("params", "pos_embedding"),)),
    }

    def ln(torch_name, flax_path):
        table[f"{torch_name}.weight"] = ("copy", (("params", *flax_path, "scale"),))
        table[f"{torch_name}.bias"] = ("copy", (("params", *flax_path, "bias"),))

    for i in range(config.depth):
        t, f = f"encoder.layers.encoder_layer_{i}", f"encoder_layer_{i}"
        ln(f"{t}.ln_1", (f, "ln_1"))
        qkv = tuple(("params", f, "self_attention", n) for n in ("query", "key", "value"))
        table[f"{t}.self_attention.in_proj_weight"] = (
            "in_proj_weight",
            tuple((*p, "kernel") for p in qkv),
        )
        table[f"{t}.self_attention.in_proj_bias"] = (
            "in_proj_bias",
            tuple((*p, "bias") for p in qkv),
        )
        table[f"{t}.self_attention.out_proj.weight"] = (
            "out_proj",
            (("params", f, "self_attention", "out", "kernel"),),
        )
        table[f"{t}.self_attention.out_proj.bias"] = (
            "copy",
            (("params", f, "self_attention", "out", "bias"),),
        )
        ln(f"{t}.ln_2", (f, "ln_2"))
        for j in (0, 3):
            table[f"{t}.mlp.{j}.weight"] = ("linear", (("params", f, f"mlp_{j}", "kernel"),))
            table[f"{t}.mlp.{j}.bias"] = ("copy", (("params", f, f"mlp_{j}", "bias"),))
    ln("encoder.ln", ("encoder_ln",))
    table["heads.head.weight"] = ("linear", (("params", "head", "kernel"),))
    table["heads.head.bias"] = ("copy", (("params", "head", "bias"),))
    return table


def _module(config) -> nn.Module:
    if isinstance(config, resnet.ResNetConfig):
        return resnet.ResNet(config)
    if isinstance(config, vit.ViTConfig):
        return vit.ViT(config)
    raise ValueError(f"config must be a ResNetConfig or ViTConfig, got {type(config).__name__}")


@functools.lru_cache(maxsize=16)  # configs are frozen; tracing ResNet152 takes seconds
def _flax_shapes(config) -> dict:
    """``{(collection, *path): shape}`` of the flax variables, without allocating them."""
    s = config.image_size
    tree = jax.eval_shape(
        lambda: _module(config).init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False)
    )
    return {k: v.shape for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _torch_shape(kind: str, flax: list) -> tuple:
    """torchvision's shape of a tensor from the flax shapes it becomes."""
    first = flax[0]
    if kind == "conv":
        kh, kw, i, o = first
        return (o, i, kh, kw)
    if kind == "linear":
        return tuple(reversed(first))
    if kind == "in_proj_weight":
        d, heads, head_dim = first
        return (3 * heads * head_dim, d)
    if kind == "in_proj_bias":
        return (3 * first[0] * first[1],)
    if kind == "out_proj":
        heads, head_dim, d = first
        return (d, heads * head_dim)
    return tuple(first)


def _convert(kind: str, a: np.ndarray, flax: list) -> list:
    """The flax arrays of one torchvision tensor (shapes already checked)."""
    if kind == "conv":
        return [a.transpose(2, 3, 1, 0)]
    if kind == "linear":
        return [a.T]
    if kind == "in_proj_weight":  # rows: query, key, value; each [heads * head_dim, D]
        return [w.T.reshape(shape) for w, shape in zip(np.split(a, 3), flax, strict=True)]
    if kind == "in_proj_bias":
        return [b.reshape(shape) for b, shape in zip(np.split(a, 3), flax, strict=True)]
    if kind == "out_proj":  # out = concat_heads(o) @ W.T: the input axis is head-major
        return [a.T.reshape(flax[0])]
    return [a]


def _tables(config):
    table = _resnet_table(config) if isinstance(config, resnet.ResNetConfig) else _vit_table(config)
    shapes = _flax_shapes(config)
    covered = [p for _, paths in table.values() for p in paths]
    # The table and the flax modules must describe the same variables.
    if sorted(covered) != sorted(shapes):
        raise RuntimeError(
            "superalign.models.torchvision: conversion table out of step with the flax model: "
            f"{sorted(set(shapes) ^ set(covered))[:3]}"
        )
    return table, shapes


def state_dict_shapes(config) -> dict[str, tuple[int, ...]]:
    """The torchvision state dict a config expects: ``{name: shape}`` in forward order.

    Args:
      config: a :class:`~superalign.models.ResNetConfig` or :class:`~superalign.models.ViTConfig`
        (``num_classes`` and, for ViT, ``image_size`` set the head and position-embedding shapes).

    Returns:
      Names as in ``model.state_dict()`` of the torchvision model (without the
      ``num_batches_tracked`` counters), and their shapes.
    """
    _module(config)
    return _expected(*_tables(config))


def _expected(table: dict, shapes: dict) -> dict:
    return {n: _torch_shape(kind, [shapes[p] for p in paths]) for n, (kind, paths) in table.items()}


def _as_numpy(name: str, value) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu()
        if not value.is_floating_point() and not value.is_complex():
            return value.numpy()
        return value.float().numpy()  # also bfloat16 / float16, which numpy may not hold
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"source: entry {name!r} is not an array (got {type(value).__name__})"
        ) from err


def _read(source) -> Mapping:
    """The mapping held by ``source`` (a path or a mapping)."""
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, str | os.PathLike):
        raise ValueError(
            "source must be a path to a .pth/.pt/.safetensors file or a mapping name -> array, "
            f"got {type(source).__name__}"
        )
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"source: no checkpoint file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own SafetensorError, among others
            raise ValueError(
                f"source: {path!r} is not a readable .safetensors file (corrupt or truncated?): "
                f"{err}"
            ) from err
    import argparse

    import torch

    try:
        # torchvision's reference training script saves its argparse.Namespace next to the
        # model ({"model": ..., "optimizer": ..., "args": args}); allow that class, nothing else.
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise ValueError(
            f"source: {path!r} is not a readable PyTorch checkpoint (corrupt or truncated, or a "
            f"pickled model rather than its state_dict()?): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"source: {path!r} holds a {type(loaded).__name__}, expected a state dict (a mapping "
            "name -> tensor); save model.state_dict()"
        )
    return loaded


def _state_dict(source) -> dict[str, np.ndarray]:
    """The flat ``{torchvision name: array}`` of a source, unwrapped and without prefixes."""
    state = _read(source)
    while True:  # {"model": {"state_dict": ...}} and the like
        inner = next(
            (state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)),
            None,
        )
        if inner is None:
            break
        state = inner
    state = {str(k): v for k, v in state.items() if not str(k).endswith("num_batches_tracked")}
    # Wrappers nest in any order (torch.compile of DataParallel: "_orig_mod.module.").
    while state:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _mismatch(config, expected: dict, state: dict) -> str | None:
    """A message naming the first key that does not fit, or None when all fit."""
    shape = {k: tuple(np.shape(v)) for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and shape[k] != expected[k]]
    unexpected = [k for k in state if k not in expected]
    problems = []
    first = next((k for k in expected if k not in state or shape[k] != expected[k]), None)
    if first in state:
        problems.append(f"key {first!r} has shape {shape[first]}, expected {expected[first]}")
    elif first is not None:
        problems.append(f"missing key {first!r} (expected shape {expected[first]})")
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r} (shape {shape[unexpected[0]]})")
    if not problems:
        return None
    return (
        f"source does not fit {config}: {'; '.join(problems)} ({len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(wrong)} of another shape, of {len(expected)} "
        "expected keys)"
    )


def from_torchvision(config, source) -> dict:
    """Flax variables of ``config`` from a torchvision state dict.

    Args:
      config: a :class:`~superalign.models.ResNetConfig` (torchvision's ``resnet18`` ...
        ``resnet152``: :func:`~superalign.models.resnet18` ...) or
        :class:`~superalign.models.ViTConfig` (``vit_b_16``, ``vit_b_32``, ``vit_l_16``), with
        the checkpoint's ``num_classes`` (and, for ViT, the ``image_size`` it was trained at).
      source: a ``.pth``/``.pt`` file (read with ``torch.load(map_location="cpu",
        weights_only=True)``), a ``.safetensors`` file, or a mapping name -> array (numpy arrays
        or torch tensors). A state dict saved under ``"state_dict"``, ``"model_state_dict"``,
        ``"model"`` or ``"net"`` is unwrapped, and the ``module.`` prefix of
        ``DataParallel``/``DistributedDataParallel`` and ``_orig_mod.`` of ``torch.compile`` are
        dropped, nested in either order. The ``args`` namespace that torchvision's reference
        training script saves beside the model is allowed; bfloat16 tensors are read as float32.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (ViT: ``{"params": ...}``), float32, with the
      structure of :func:`superalign.models.init`'s.

    Raises:
      FileNotFoundError: ``source`` names no file.
      ValueError: the file cannot be read (corrupt, truncated, a pickled model), or the state
        dict does not fit ``config``: the message names the first missing, unexpected or
        wrongly shaped key and the shapes; or a tensor is not finite.
    """
    _module(config)
    state = _state_dict(source)
    table, shapes = _tables(config)
    expected = _expected(table, shapes)
    message = _mismatch(config, expected, state)
    if message is not None:
        raise ValueError(message)
    flat = {}
    for name, (kind, paths) in table.items():
        a = _as_numpy(name, state[name])
        # bfloat16 (and the other ml_dtypes floats that safetensors returns) count as floating.
        if not (np.issubdtype(a.dtype, np.floating) or jnp.issubdtype(a.dtype, jnp.floating)):
            raise ValueError(f"source: key {name!r} has dtype {a.dtype}, expected floating point")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"source: key {name!r} (shape {a.shape}) contains NaN or Inf")
        for path, value in zip(paths, _convert(kind, a, [shapes[p] for p in paths]), strict=True):
            flat[path] = jnp.asarray(value)
    return traverse_util.unflatten_dict(flat)


__all__ = ["WRAPPER_KEYS", "from_torchvision", "state_dict_shapes"]
