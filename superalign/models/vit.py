"""Vision transformer (torchvision's ViT layout) in flax linen, with torchvision's layer names.

Addressable layers: ``conv_proj`` (patch embedding, ``[B, P, D]``), per block ``i``
``encoder_layer_{i}.self_attention`` and ``encoder_layer_{i}.mlp`` (the attention and MLP-block
outputs, before their residual additions) and ``encoder_layer_{i}`` (the block output), and
``encoder.ln`` (the final layer norm). Token 0 is the class (CLS) token; the paper's units are
its values (:func:`units`). A layer is recorded (flax ``sow``, collection ``"intermediates"``)
only when it is listed in the module's ``capture`` field.

:func:`vit_b16` is ViT-B/16 (12 blocks, width 768, 12 heads, MLP 3072); :func:`vit_b32` (32x32
patches) and :func:`vit_l16` (24 blocks, width 1024, 16 heads, MLP 4096) are torchvision's other
sizes (trained weights load with :func:`superalign.models.from_torchvision`); :func:`vit_small` is
the same code with 6 blocks of width 64 on 4x4 patches, for small images on a CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from superalign import checks
from superalign.models.capture import check_layer_names, tap


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A ViT classifier on the CLS token.

    Attributes:
      patch_size: side of the square patches (stride of the patch embedding).
      hidden: token width D.
      depth: number of encoder blocks.
      heads: attention heads (must divide ``hidden``).
      mlp_dim: hidden width of each MLP block.
      num_classes: size of the classifier.
      image_size: height = width of the input images (a multiple of ``patch_size``).
    """

    patch_size: int = 16
    hidden: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    image_size: int = 224

    def __post_init__(self):
        for name in ("patch_size", "hidden", "depth", "heads", "mlp_dim", "num_classes"):
            checks.positive_int(name, getattr(self, name))
        checks.positive_int("image_size", self.image_size)
        if self.hidden % self.heads:
            raise ValueError(f"heads={self.heads} must divide hidden={self.hidden}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}"
            )

    @property
    def family(self) -> str:
        return "vit"

    def layer_names(self) -> tuple[str, ...]:
        names = ["conv_proj"]
        for i in range(self.depth):
            b = f"encoder_layer_{i}"
            names += [f"{b}.self_attention", f"{b}.mlp", b]
        return (*names, "encoder.ln")

    def layer_width(self, name: str) -> int:
        del name
        return self.hidden


def vit_b16(num_classes: int = 1000, image_size: int = 224) -> ViTConfig:
    """ViT-B/16: 16x16 patches, 12 blocks, width 768, 12 heads, MLP 3072."""
    return ViTConfig(num_classes=num_classes, image_size=image_size)


def vit_b32(num_classes: int = 1000, image_size: int = 224) -> ViTConfig:
    """ViT-B/32: 32x32 patches, 12 blocks, width 768, 12 heads, MLP 3072."""
    return ViTConfig(patch_size=32, num_classes=num_classes, image_size=image_size)


def vit_l16(num_classes: int = 1000, image_size: int = 224) -> ViTConfig:
    """ViT-L/16: 16x16 patches, 24 blocks, width 1024, 16 heads, MLP 4096."""
    return ViTConfig(
        hidden=1024, depth=24, heads=16, mlp_dim=4096, num_classes=num_classes,
        image_size=image_size,
    )  # fmt: skip


def vit_small(num_classes: int = 10, image_size: int = 16) -> ViTConfig:
    """4x4 patches, 6 blocks, width 64, 4 heads, MLP 128: for CPU runs."""
    return ViTConfig(
        patch_size=4,
        hidden=64,
        depth=6,
        heads=4,
        mlp_dim=128,
        num_classes=num_classes,
        image_size=image_size,
    )


_dense_init = nn.initializers.xavier_uniform()


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))`` (GELU, exact erf)."""

    config: ViTConfig
    prefix: str
    capture: tuple = ()

    @nn.compact
    def __call__(self, x):
        cfg, p = self.config, self.prefix
        y = nn.LayerNorm(epsilon=1e-6, name="ln_1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=cfg.heads, kernel_init=_dense_init, name="self_attention"
        )(y, y)
        x = x + tap(self, f"{p}.self_attention", y)
        y = nn.LayerNorm(epsilon=1e-6, name="ln_2")(x)
        y = nn.Dense(cfg.mlp_dim, kernel_init=_dense_init, name="mlp_0")(y)
        y = nn.Dense(cfg.hidden, kernel_init=_dense_init, name="mlp_3")(nn.gelu(y, False))
        return tap(self, p, x + tap(self, f"{p}.mlp", y))


class ViT(nn.Module):
    """``__call__(images [B, H, W, 3], train) -> logits [B, num_classes]`` (no dropout)."""

    config: ViTConfig
    capture: tuple = ()

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no dropout or batch statistics
        cfg = self.config
        p = cfg.patch_size
        x = nn.Conv(cfg.hidden, (p, p), (p, p), padding="VALID", name="patch_embedding")(x)
        x = x.reshape(x.shape[0], -1, cfg.hidden)
        x = tap(self, "conv_proj", x)
        cls = self.param("class_token", nn.initializers.zeros, (1, 1, cfg.hidden))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.hidden)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], cfg.hidden))
        x = x + pos
        for i in range(cfg.depth):
            x = EncoderBlock(
                cfg, f"encoder_layer_{i}", tuple(self.capture), name=f"encoder_layer_{i}"
            )(x)
        x = nn.LayerNorm(epsilon=1e-6, name="encoder_ln")(x)
        x = tap(self, "encoder.ln", x)
        return nn.Dense(cfg.num_classes, kernel_init=nn.initializers.zeros, name="head")(x[:, 0])


def units(config: ViTConfig, name: str, x: jax.Array) -> jax.Array:
    """The CLS token of a recorded layer, ``[B, D]`` (``conv_proj`` has none: its mean patch)."""
    del config
    return x.mean(axis=1) if name == "conv_proj" else x[:, 0]


def check_names(config: ViTConfig, layers: Sequence[str]) -> tuple[str, ...]:
    return check_layer_names(layers, config.layer_names(), f"ViT(depth={config.depth})")
