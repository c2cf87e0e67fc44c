"""Configs of the DNN->brain experiment (paper section 6, appendix A.5-A.6; PROTOCOL.md).

``paper`` (the default, also ``nsd``): the paper's setting on a real NSD download
(``--config.nsd_root`` and the activation files must be given). ``checkpoint``: the same with
DNNs read from trained torchvision checkpoints (``--config.checkpoint``, ``--config.arch``): the
experiment extracts the features of the images the subjects saw itself; the per-DNN fields left
empty (``()``) take the architecture's defaults (:func:`resolve_checkpoints`). ``quick`` (also
``synthetic``): the same pipeline on a miniature NSD written by
``experiments/nsd_synthetic.py`` (a few minutes on a CPU). ``tiny``: a smaller miniature (two
subjects, one "DNN"; seconds).

The config holds an :class:`superalign.SAEConfig` (``sae``) shared by every DNN, whose
``n_inputs``, ``n_latents`` and ``k`` are set per DNN (its width, ``sae_expansion``, ``sae_k``;
placeholders 1), and for the miniature its :class:`SyntheticSpec` (``synthetic``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments import launch
from experiments.configs.dnn import CHECKPOINT_ARCHS
from experiments.nsd_synthetic import SyntheticSpec
from superalign import datasets, models, sae

ARCH_LABELS = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
    "vit_b16": "ViT-B/16",
    "vit_b32": "ViT-B/32",
    "vit_l16": "ViT-L/16",
}
"""How a DNN read from a checkpoint is named (with its layer) when ``dnns`` is empty."""


def _sae() -> sae.SAEConfig:
    """The paper's DNN SAE (PROTOCOL.md, "Deep networks"): 300 epochs of batch 64."""
    return sae.dnn_config(1, expansion=1, k=1)


@dataclasses.dataclass(frozen=True)
class BrainConfig:
    name: str = "nsd"
    # NSD: root folder (holding nsddata, nsddata_betas, nsddata_stimuli), subjects, ROI.
    nsd_root: str = ""
    subjects: tuple = (1, 2, 5, 7)
    n_sessions: int = 0  # 0: every session the subject completed (40 for subjects 1, 2, 5, 7)
    roi_atlas: str = "streams"
    roi_label: str = "ventral"
    require_all_repetitions: bool = True
    cache_dir: str = ""  # "": <out>/cache
    # DNNs: one activation file per DNN for the NSD images (.npz with image_ids, activations),
    # and optionally a file the SAE trains on ("": the NSD file itself).
    dnns: tuple = ("ResNet50 layer4.2", "ViT-B/16 block 11")
    activation_files: tuple = ("", "")
    sae_train_files: tuple = ("", "")
    # SAEs: per DNN an expansion and k. sae_param_files (an .npz of W_enc, b_enc, W_dec, b_dec
    # per DNN; () for none) reuses SAEs trained elsewhere.
    sae: sae.SAEConfig = dataclasses.field(default_factory=_sae)  # per DNN: width, k
    sae_param_files: tuple = ()
    sae_expansion: tuple = (4, 4)
    sae_k: tuple = (82, 64)
    sae_chunk_rows: int = 262_144  # rows sent to the device per jitted chunk
    sae_seed: int = 0
    random_sae_seed: int = 1_000
    encode_rows: int = 4_096  # rows per jitted encoding call
    # Ridge (PROTOCOL.md, "Alignment protocol").
    n_folds: int = 5
    fold_seed: int = 0
    scrambled_control: bool = True  # Neuron->Voxel with the images shuffled: must score ~0
    scramble_seed: int = 0
    # DNNs from trained torchvision checkpoints (one file and one superalign.models preset per
    # DNN; () : none). The NSD images' units are extracted here; activation_files stay empty.
    checkpoint: tuple = ()
    arch: tuple = ()
    checkpoint_layers: tuple = ()  # per DNN; (): the penultimate layer (default_layer)
    num_classes: int = 1000  # the checkpoints' classifier size
    image_size: int = 224  # evaluation transform: centre crop
    resize_size: int = 256  # evaluation transform: shorter side before the crop
    extract_batch_size: int = 64
    # Voxelwise SAE->Voxel minus Neuron->Voxel maps over the subject's anatomy (nilearn).
    gain_maps: bool = True
    # The miniature NSD (None: a real download at nsd_root).
    synthetic: SyntheticSpec | None = None


def paper() -> BrainConfig:
    """The paper's setting: subjects 1, 2, 5, 7, streams "ventral", ResNet50 and ViT-B/16."""
    return BrainConfig()


def checkpoint() -> BrainConfig:
    """The paper's setting with DNNs from torchvision checkpoints (ResNet50 by default).

    Give ``nsd_root`` and ``checkpoint`` (one file per DNN; ``arch`` one preset per DNN). The
    names, layers and SAE sizes follow from ``arch`` (:func:`resolve_checkpoints`).
    """
    return dataclasses.replace(
        paper(),
        dnns=(),
        activation_files=(),
        sae_train_files=(),
        sae_expansion=(),
        sae_k=(),
        arch=("resnet50",),
    )


def default_layer(arch: str) -> str:
    """The penultimate layer of section 6 (PROTOCOL.md, "Brains"): the last block's output.

    ResNet50: ``layer4.2`` (the last bottleneck's output, 2,048 units, centre position); ViT-B/16:
    ``encoder_layer_11`` (the last encoder block's output, CLS token). Other presets: the same
    block of theirs (ResNet18: ``layer4.1``; ViT-L/16: ``encoder_layer_23``).
    """
    mc = models.preset(arch, num_classes=1000, image_size=224)
    if mc.family == "resnet":
        return f"layer4.{mc.stage_sizes[-1] - 1}"
    return f"encoder_layer_{mc.depth - 1}"


def default_sae(arch: str) -> tuple[int, int]:
    """``(expansion, k)`` of section 6's SAEs: ResNet 4x, k = 82; ViT 4x, k = 64 (PROTOCOL.md)."""
    family = models.preset(arch, num_classes=1000, image_size=224).family
    return (4, 82) if family == "resnet" else (4, 64)


def _file_labels(cfg: BrainConfig) -> list[str]:
    """The shortest trailing parts of the checkpoint paths (suffix dropped) that tell them all
    apart (``seed0/model`` and ``seed1/model``); their positions if the paths are the same."""
    parts = [Path(f).with_suffix("").parts for f in cfg.checkpoint]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"checkpoint {i + 1}" for i in range(len(parts))]


def resolve_checkpoints(cfg: BrainConfig) -> BrainConfig:
    """A config with checkpoints, its per-DNN fields filled in (unchanged without checkpoints).

    ``arch`` must give one preset per checkpoint. Empty ``dnns``, ``checkpoint_layers``,
    ``sae_expansion``, ``sae_k``, ``activation_files`` and ``sae_train_files`` take the defaults
    (names ``"<arch> <layer>"``, :func:`default_layer`, :func:`default_sae`, files written by the
    experiment, SAEs trained on the NSD features); given ones must have one entry per checkpoint.
    Raises ``ValueError`` naming the field.
    """
    if not cfg.checkpoint:
        if not cfg.dnns:
            raise ValueError(
                "checkpoint must give a torchvision file per DNN (--config.checkpoint=FILE "
                "--config.arch=resnet50), or dnns and activation_files the DNNs' features"
            )
        for name in ("arch", "checkpoint_layers"):
            if getattr(cfg, name):
                raise ValueError(
                    f"{name} is read only with checkpoint set, got {getattr(cfg, name)!r}"
                )
        return cfg
    datasets.DataConfig(
        name="nsd", path=".", image_size=cfg.image_size, resize_size=cfg.resize_size
    )  # image_size and resize_size checked where the data set checks them
    launch.positive_int("num_classes", cfg.num_classes)
    launch.positive_int("extract_batch_size", cfg.extract_batch_size)
    n = len(cfg.checkpoint)
    if not all(isinstance(c, str) and c for c in cfg.checkpoint):
        raise ValueError(f"checkpoint must be a tuple of file paths, got {cfg.checkpoint!r}")
    if len(cfg.arch) != n or any(a not in CHECKPOINT_ARCHS for a in cfg.arch):
        raise ValueError(
            f"arch must name one architecture of {CHECKPOINT_ARCHS} per checkpoint ({n}), got "
            f"{cfg.arch!r}"
        )
    if cfg.synthetic is not None:
        raise ValueError(
            "checkpoint DNNs need an NSD tree with stimuli: use --config checkpoint "
            "--config.nsd_root=DIR, not the synthetic configs"
        )
    if any(cfg.activation_files):
        raise ValueError(
            "activation_files must be empty with checkpoint set (the experiment writes them), "
            f"got {cfg.activation_files!r}"
        )

    def per_dnn(name, default):
        value = getattr(cfg, name)
        if value == ():
            return tuple(default(i) for i in range(n))
        if len(value) != n:
            raise ValueError(
                f"{name} must have one entry per checkpoint ({n}: {cfg.checkpoint}) or be () for "
                f"the defaults, got {value!r}"
            )
        return value

    layers = per_dnn("checkpoint_layers", lambda i: default_layer(cfg.arch[i]))
    names = [f"{ARCH_LABELS[a]} {layer}" for a, layer in zip(cfg.arch, layers, strict=True)]
    if len(set(names)) < n:  # the same architecture and layer twice: tell them apart by file
        names = [f"{name} ({label})" for name, label in zip(names, _file_labels(cfg), strict=True)]
    return dataclasses.replace(
        cfg,
        checkpoint_layers=layers,
        dnns=per_dnn("dnns", lambda i: names[i]),
        sae_expansion=per_dnn("sae_expansion", lambda i: default_sae(cfg.arch[i])[0]),
        sae_k=per_dnn("sae_k", lambda i: default_sae(cfg.arch[i])[1]),
        activation_files=("",) * n,
        sae_train_files=per_dnn("sae_train_files", lambda i: ""),
    )


def synthetic() -> BrainConfig:
    """A miniature NSD with known features: two "DNNs" (the features, and a superposed mix)."""
    cfg = paper()
    return dataclasses.replace(
        cfg,
        name="synthetic",
        dnns=("features", "mixed"),
        sae=dataclasses.replace(cfg.sae, n_epochs=30),
        sae_expansion=(2, 4),
        sae_k=(4, 4),
        synthetic=SyntheticSpec(subjects=cfg.subjects, n_sessions=3, shape=(20, 24, 18)),
    )


def tiny() -> BrainConfig:
    """Seconds: two subjects of a smaller miniature, the superposed "DNN" only, 3 SAE epochs."""
    cfg = synthetic()
    return dataclasses.replace(
        cfg,
        subjects=(1, 2),
        dnns=("mixed",),
        sae=dataclasses.replace(cfg.sae, n_epochs=3),
        sae_expansion=(4,),
        sae_k=(4,),
        n_folds=3,
        gain_maps=False,  # drawn by the synthetic and nsd configs; seconds per map
        synthetic=dataclasses.replace(
            cfg.synthetic, subjects=(1, 2), shape=(10, 12, 9), n_train_rows=2_000
        ),
    )


PRESETS = {
    "paper": paper,
    "quick": synthetic,
    "tiny": tiny,
    "nsd": paper,
    "synthetic": synthetic,
    "checkpoint": checkpoint,
}


def get_config(name: str = "paper") -> BrainConfig:
    return launch.preset(PRESETS, name)
