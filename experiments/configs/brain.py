"""Configs of the DNN->brain experiment (paper section 6, appendix A.5-A.6; PROTOCOL.md).

``paper`` (the default, also ``nsd``): the paper's setting on a real NSD download
(``--config.nsd_root`` and the activation files must be given). ``quick`` (also ``synthetic``):
the same pipeline on a miniature NSD written by ``experiments/_nsd_synthetic.py`` (a few minutes
on a CPU). ``tiny``: a smaller miniature (two subjects, one "DNN"; seconds).

The config holds an :class:`superalign.SAEConfig` (``sae``) shared by every DNN, whose
``n_inputs``, ``n_latents`` and ``k`` are set per DNN (its width, ``sae_expansion``, ``sae_k``;
placeholders 1), and for the miniature its :class:`SyntheticSpec` (``synthetic``).
"""

from __future__ import annotations

import dataclasses

from experiments import launch
from experiments._nsd_synthetic import SyntheticSpec
from superalign import sae


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
    # The miniature NSD (None: a real download at nsd_root).
    synthetic: SyntheticSpec | None = None


def paper() -> BrainConfig:
    """The paper's setting: subjects 1, 2, 5, 7, streams "ventral", ResNet50 and ViT-B/16."""
    return BrainConfig()


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
        synthetic=dataclasses.replace(
            cfg.synthetic, subjects=(1, 2), shape=(10, 12, 9), n_train_rows=2_000
        ),
    )


PRESETS = {"paper": paper, "quick": synthetic, "tiny": tiny, "nsd": paper, "synthetic": synthetic}


def get_config(name: str = "paper") -> BrainConfig:
    return launch.preset(PRESETS, name)
