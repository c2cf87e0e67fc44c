"""Configs of the deep-network experiment (paper section 5; values from PROTOCOL.md).

Select one with ``--config NAME``; override fields with ``--config.FIELD=VALUE`` (nested:
``--config.data.data_dir=/data/tfds``, ``--config.sae.n_epochs=100``). Per-model fields are
tuples aligned with ``models``; per-layer fields are tuples of tuples aligned with ``layers``.
The config holds the library's :class:`superalign.datasets.DataConfig` (``data``) and an
:class:`superalign.SAEConfig` (``sae``) shared by every layer, whose ``n_inputs``, ``n_latents``
and ``k`` are set per layer (the layer's width, ``sae_expansion``, ``sae_k``; placeholders 1).

Presets: ``paper`` (the default) = ``imagenet_resnet50``; ``quick`` = ``digits_small``;
``tiny``: one small ViT for an epoch of digits, one layer (tests, seconds); and

- ``imagenet_resnet50``: two ResNet50 seeds on ImageNet, SAEs on ``layer2.3.bn2`` and
  ``layer4.2.bn2`` (accelerator).
- ``imagenet_vit_b16``: two ViT-B/16 seeds, SAEs on the MLP-block outputs of blocks 5 and 11
  (accelerator).
- ``digits_small``: two seeds each of a small ResNet and a small ViT on scikit-learn's 8x8
  digits upscaled to 16x16, the analogous intermediate and last layers (CPU, minutes).
- ``checkpoints``: no training; trained torchvision checkpoints of one architecture (``arch``,
  one file per seed in ``checkpoints``) scored on a folder of images (``images``). ``layers``,
  ``sae_expansion`` and ``sae_k`` are then flat tuples (one entry per layer), and ``()`` means the
  architecture's defaults (:func:`default_layers`, :func:`default_sae`). The per-model training
  fields (``models``, ``optimizer``, ...) and ``data`` are not used and stay empty.
"""

from __future__ import annotations

import dataclasses

from experiments import launch
from superalign import datasets, models, sae

PER_MODEL = (
    "models",
    "vmap_seeds",
    "optimizer",
    "lr",
    "weight_decay",
    "epochs",
    "warmup_epochs",
    "label_smoothing",
    "layers",
    "sae_expansion",
    "sae_k",
)
"""The fields with one entry per model."""

CHECKPOINT_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vit_b16",
    "vit_b32",
    "vit_l16",
)
"""The ``superalign.models`` presets that ``models.from_torchvision`` reads checkpoints of."""

RESNET_DENSITY = 82 / 2048
"""Active latents per latent of ResNet SAEs: ResNet50 ``layer4.2.bn2``, 4x, k = 82 (PROTOCOL.md)."""
VIT_DENSITY = 153 / 1536
"""Active latents per latent of ViT SAEs: ViT-B/16 seed-to-seed, 2x, k = 153 (PROTOCOL.md)."""


def _sae() -> sae.SAEConfig:
    """The paper's DNN SAE (Adam 4e-4, batch 64, 300 shuffled epochs, AuxK dead after 32 steps)."""
    return sae.dnn_config(1, expansion=1, k=1)


@dataclasses.dataclass(frozen=True)
class DNNExperimentConfig:
    data: datasets.DataConfig = dataclasses.field(default_factory=datasets.DataConfig)
    data_seed: int = 0  # order and augmentation of training batches (shared by all seeds)
    # Models: presets of superalign.models, trained from every seed.
    models: tuple = ("resnet50",)
    seeds: tuple = (0, 1)
    vmap_seeds: tuple = (True,)  # per model: seeds as a vmap axis (else one after another)
    optimizer: tuple = ("sgd",)  # per model: "sgd" (momentum 0.9, nesterov off) or "adamw"
    lr: tuple = (0.1,)  # per model: peak learning rate (linear warmup, cosine decay to 0)
    weight_decay: tuple = (1e-4,)  # per model
    epochs: tuple = (90,)  # per model
    warmup_epochs: tuple = (0,)  # per model
    label_smoothing: tuple = (0.0,)  # per model
    batch_size: int = 256  # global batch, split over devices
    checkpoint_every: int = 1000  # training steps between orbax checkpoints
    # Layers and their SAEs (per model, per layer).
    layers: tuple = (("layer2.3.bn2", "layer4.2.bn2"),)
    sae_expansion: tuple = ((4, 4),)
    sae_k: tuple = ((20, 82),)
    sae: sae.SAEConfig = dataclasses.field(default_factory=_sae)  # per layer: width, k
    sae_chunk_rows: int = 65_536  # rows per jitted SAE chunk (shuffled within the chunk)
    sae_train_passes: int = 1  # passes over the train split when extracting SAE activations
    sae_train_augment: bool = False  # those passes use the training augmentation
    random_sae_seed: int = 1_000  # the untrained control SAE
    # Extraction and alignment.
    extract_batch_size: int = 250
    shard_rows: int = 16_000  # a multiple of extract_batch_size
    n_folds: int = 5
    fold_seed: int = 0
    # Trained checkpoints instead of training (the ``checkpoints`` preset; "" / () otherwise).
    arch: str = ""  # a superalign.models preset of CHECKPOINT_ARCHS
    checkpoints: tuple = ()  # torchvision files (.pth, .pt, .safetensors), one per seed
    images: str = ""  # folder of images the alignment is scored on (datasets "folder")
    train_images: str = ""  # folder the SAEs train on; "": a seeded half of ``images``
    split_seed: int = 0  # that half (superalign.compare.split_rows)
    num_classes: int = 1000  # the checkpoints' classifier size
    image_size: int = 224  # evaluation transform: centre crop
    resize_size: int = 256  # evaluation transform: shorter side before the crop

    def __post_init__(self):
        launch.per_run("sae", self.sae, n_inputs="the layer", n_latents="sae_expansion", k="sae_k")
        if self.arch or self.checkpoints or self.images or self.train_images:
            self._check_checkpoint_fields()
            if not self.models:  # the checkpoints preset as given: per-model fields derived
                return
        n = len(self.models)
        if n == 0:
            raise ValueError("models must name at least one model")
        for name in PER_MODEL[1:]:
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n:
                raise ValueError(
                    f"{name} must be a tuple with one entry per model ({n}: {self.models}), "
                    f"got {value!r}"
                )
        for name in ("sae_expansion", "sae_k"):
            for m, (per_layer, layers) in enumerate(
                zip(getattr(self, name), self.layers, strict=True)
            ):
                if not isinstance(per_layer, tuple) or len(per_layer) != len(layers):
                    raise ValueError(
                        f"{name}[{m}] must have one entry per layer of {self.models[m]} "
                        f"({layers}), got {per_layer!r}"
                    )
        for o in self.optimizer:
            if o not in ("sgd", "adamw"):
                raise ValueError(f"optimizer entries must be 'sgd' or 'adamw', got {o!r}")
        if len(self.seeds) < 2:
            raise ValueError(f"seeds must hold at least two seeds, got {self.seeds!r}")
        if self.shard_rows % self.extract_batch_size:
            raise ValueError(
                f"shard_rows={self.shard_rows} must be a multiple of "
                f"extract_batch_size={self.extract_batch_size}"
            )

    def _check_checkpoint_fields(self):
        """The checkpoint fields as given, or as :func:`resolve_checkpoints` fills them in."""
        if self.arch not in CHECKPOINT_ARCHS:
            raise ValueError(
                f"arch must be one of {CHECKPOINT_ARCHS} when checkpoints, images or "
                f"train_images are set (--config checkpoints --config.arch=resnet50), got "
                f"{self.arch!r}"
            )
        if self.models not in ((), (self.arch,)):
            raise ValueError(
                f"models trains networks from seeds; with arch={self.arch!r} (scoring checkpoints) "
                f"leave it empty, got {self.models!r}"
            )
        if not all(isinstance(c, str) and c for c in self.checkpoints):
            raise ValueError(
                f"checkpoints must be a tuple of file paths, one per seed, got {self.checkpoints!r}"
            )
        if self.checkpoints and len(self.checkpoints) != len(self.seeds):
            raise ValueError(
                f"checkpoints must hold one file per seed (seeds {self.seeds}: "
                f"{len(self.seeds)} files), got {len(self.checkpoints)}: {self.checkpoints!r}"
            )
        for name in ("images", "train_images"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a folder path, got {getattr(self, name)!r}")
        datasets.DataConfig(
            name="folder", path=".", image_size=self.image_size, resize_size=self.resize_size
        )  # image_size and resize_size checked where the data set checks them
        launch.positive_int("num_classes", self.num_classes)
        if self.models:
            return  # resolved: the per-model checks follow
        if not all(isinstance(x, str) for x in self.layers):
            raise ValueError(
                "layers must be a tuple of layer names with arch set (one model; () for the "
                f"architecture's defaults), got {self.layers!r}"
            )
        for name in ("sae_expansion", "sae_k"):
            value = getattr(self, name)
            if value == ():
                continue
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"{name} must be a tuple of positive integers, got {value!r}")
            n_layers = len(self.layers) if self.layers else 2
            if len(value) != n_layers:
                raise ValueError(
                    f"{name} must have one entry per layer ({n_layers}: "
                    f"{self.layers or 'the defaults'}) or be () for the defaults, got {value!r}"
                )


def imagenet_resnet50() -> DNNExperimentConfig:
    """Two ResNet50 seeds (90 epochs of SGD, batch 256, cosine), SAEs as in the paper.

    layer4.2.bn2 (512 units): 4x, k = 82 (PROTOCOL.md). layer2.3.bn2 (128 units): 4x with k = 20
    (the same 4% density; the paper does not state this layer's k).
    """
    return DNNExperimentConfig()


def imagenet_vit_b16() -> DNNExperimentConfig:
    """Two ViT-B/16 seeds (AdamW, torchvision's recipe scaled to batch 1024), SAEs 2x, k = 153.

    torchvision trains ViT-B/16 with batch 4096, lr 3e-3, weight decay 0.3, 300 epochs, 30
    warmup epochs, label smoothing 0.11 and heavy augmentation (mixup, cutmix, auto-augment);
    here batch 1024 with the lr scaled linearly (7.5e-4) and the standard crop-and-flip
    augmentation only. Seed-to-seed SAEs: 2x, k = 153 (PROTOCOL.md).
    """
    return DNNExperimentConfig(
        models=("vit_b16",),
        vmap_seeds=(False,),
        optimizer=("adamw",),
        lr=(7.5e-4,),
        weight_decay=(0.3,),
        epochs=(300,),
        warmup_epochs=(30,),
        label_smoothing=(0.11,),
        batch_size=1024,
        layers=(("encoder_layer_5.mlp", "encoder_layer_11.mlp"),),
        sae_expansion=((2, 2),),
        sae_k=((153, 153),),
    )


def digits_small() -> DNNExperimentConfig:
    """CPU: small ResNet and ViT, two seeds each, on 16x16 digits (988 train, 809 validation).

    Layers: the analogues of the paper's intermediate and deep layers (ResNet ``layer2.0.bn2``,
    32 units, and ``layer4.0.bn2``, 128 units; ViT MLP outputs of blocks 2 and 5 of 6, 64 units).
    SAEs keep the paper's densities: ResNet 4x with k = 8 and 20, ViT 2x with k = 13 (10%, as
    ViT-B/16's 153 of 1536). SAE rows: 4 augmented passes over the training images, each 3 full
    batches of 256 (3,072 rows; each pass drops a different 220 of the 988 images).
    """
    return DNNExperimentConfig(
        data=datasets.DataConfig(name="digits", image_size=16),
        models=("resnet_small", "vit_small"),
        vmap_seeds=(True, True),
        optimizer=("adamw", "adamw"),
        lr=(2e-3, 2e-3),
        weight_decay=(5e-4, 0.05),
        epochs=(10, 80),
        warmup_epochs=(1, 5),
        label_smoothing=(0.0, 0.0),
        batch_size=64,
        checkpoint_every=100,
        layers=(("layer2.0.bn2", "layer4.0.bn2"), ("encoder_layer_2.mlp", "encoder_layer_5.mlp")),
        sae_expansion=((4, 4), (2, 2)),
        sae_k=((8, 20), (13, 13)),
        sae_chunk_rows=4096,
        sae_train_passes=4,
        sae_train_augment=True,
        extract_batch_size=256,
        shard_rows=1024,
        n_folds=5,
    )


def select_model(cfg: DNNExperimentConfig, m: int) -> DNNExperimentConfig:
    """The config of model ``m`` alone (entry ``m`` of every per-model field)."""
    return dataclasses.replace(cfg, **{name: (getattr(cfg, name)[m],) for name in PER_MODEL})


def default_layers(arch: str) -> tuple[str, ...]:
    """The paper's intermediate and deep layer of an architecture (section 5), or the analogues.

    ResNet: the ``bn2`` of the last block of stage 2 and of stage 4 (ResNet50: ``layer2.3.bn2``,
    ``layer4.2.bn2``; ResNet18: ``layer2.1.bn2``, ``layer4.1.bn2``). ViT: the MLP-block outputs
    of the middle and the last block (ViT-B/16: ``encoder_layer_5.mlp``,
    ``encoder_layer_11.mlp``; ViT-L/16: 11 and 23).
    """
    mc = models.preset(arch, num_classes=1000, image_size=224)
    if mc.family == "resnet":
        return (f"layer2.{mc.stage_sizes[1] - 1}.bn2", f"layer4.{mc.stage_sizes[3] - 1}.bn2")
    return (f"encoder_layer_{mc.depth // 2 - 1}.mlp", f"encoder_layer_{mc.depth - 1}.mlp")


def default_sae(arch: str, width: int) -> tuple[int, int]:
    """``(expansion, k)`` of a layer of ``width`` units: ResNet 4x and ViT 2x, k at the paper's
    density (:data:`RESNET_DENSITY`, :data:`VIT_DENSITY`; ResNet50 ``layer2.3.bn2``: k = 20)."""
    family = models.preset(arch, num_classes=1000, image_size=224).family
    expansion, density = (4, RESNET_DENSITY) if family == "resnet" else (2, VIT_DENSITY)
    return expansion, max(1, round(density * expansion * width))


def resolve_checkpoints(cfg: DNNExperimentConfig) -> DNNExperimentConfig:
    """A ``checkpoints`` config in the per-model layout the experiment runs on.

    One model (``arch``); ``layers``, ``sae_expansion`` and ``sae_k`` filled in with the
    architecture's defaults where empty; ``data`` the folder ``images`` read with the
    evaluation transform. Layer names are checked here (``ValueError`` listing the valid ones).
    """
    if not cfg.arch:
        raise ValueError("resolve_checkpoints needs a config with arch set")
    if cfg.models:
        return cfg
    mc = models.preset(cfg.arch, num_classes=cfg.num_classes, image_size=cfg.image_size)
    layers = models.check_layers(mc, cfg.layers or default_layers(cfg.arch))
    defaults = [default_sae(cfg.arch, models.layer_width(mc, layer)) for layer in layers]
    expansion = cfg.sae_expansion or tuple(e for e, _ in defaults)
    k = cfg.sae_k or tuple(k for _, k in defaults)
    for name, value in (("sae_expansion", expansion), ("sae_k", k)):
        if len(value) != len(layers):
            raise ValueError(
                f"{name} must have one entry per layer ({len(layers)}: {layers}), got {value!r}"
            )
    template = DNNExperimentConfig()  # one entry per model: unused training settings
    training = [n for n in PER_MODEL if n not in ("models", "layers", "sae_expansion", "sae_k")]
    return dataclasses.replace(
        cfg,
        data=datasets.DataConfig(
            name="folder",
            path=cfg.images or ".",
            image_size=cfg.image_size,
            resize_size=cfg.resize_size,
        ),
        **{name: getattr(template, name) for name in training},
        models=(cfg.arch,),
        layers=(layers,),
        sae_expansion=(expansion,),
        sae_k=(k,),
    )


def checkpoints() -> DNNExperimentConfig:
    """Trained torchvision checkpoints (ResNet50 by default) scored on a folder of images.

    Give ``checkpoints`` (one file per seed) and ``images``; optionally ``train_images``. The
    paper's layers and SAE sizes for ResNet50 and ViT-B/16 (:func:`default_layers`,
    :func:`default_sae`), 300 SAE epochs, 5 folds. Extraction batches of 250, shards of 16,000
    rows, as ``imagenet_resnet50``.
    """
    return DNNExperimentConfig(
        **{name: () for name in PER_MODEL},
        arch="resnet50",
    )


def tiny() -> DNNExperimentConfig:
    """Seconds: digits_small's ViT (seeds 0 and 1) for one epoch, one SAE on block 5 (2x, k = 6)."""
    cfg = select_model(digits_small(), 1)
    return dataclasses.replace(
        cfg,
        lr=(1e-3,),
        weight_decay=(0.0,),
        epochs=(1,),
        warmup_epochs=(0,),
        checkpoint_every=3,
        layers=(("encoder_layer_5.mlp",),),
        sae_expansion=((2,),),
        sae_k=((6,),),
        sae=dataclasses.replace(cfg.sae, n_epochs=3),
        sae_chunk_rows=512,
        sae_train_passes=1,
        extract_batch_size=128,
        shard_rows=256,
        n_folds=3,
    )


PRESETS = {
    "paper": imagenet_resnet50,
    "quick": digits_small,
    "tiny": tiny,
    "imagenet_resnet50": imagenet_resnet50,
    "imagenet_vit_b16": imagenet_vit_b16,
    "digits_small": digits_small,
    "checkpoints": checkpoints,
}


def get_config(name: str = "paper") -> DNNExperimentConfig:
    return launch.preset(PRESETS, name)
