"""Configs of the DNN->brain experiment (paper section 6, appendix A.5-A.6; REFERENCE.md).

``nsd``: the paper's setting on a real NSD download (``--config.nsd_root`` and the activation
files must be given). ``synthetic``: the same pipeline on a miniature NSD written by
``experiments/_nsd_synthetic.py`` (a few minutes on a CPU).
"""

from __future__ import annotations

import dataclasses


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
    # SAEs (REFERENCE.md, "Deep networks"): dnn_config with these per-DNN sizes. sae_param_files
    # (an .npz of W_enc, b_enc, W_dec, b_dec per DNN; () for none) reuses SAEs trained elsewhere.
    sae_param_files: tuple = ()
    sae_expansion: tuple = (4, 4)
    sae_k: tuple = (82, 64)
    sae_epochs: int = 300
    sae_batch_size: int = 64
    sae_chunk_rows: int = 262_144  # rows sent to the device per jitted chunk
    sae_seed: int = 0
    random_sae_seed: int = 1_000
    encode_rows: int = 4_096  # rows per jitted encoding call
    # Ridge (REFERENCE.md, "Alignment protocol").
    n_folds: int = 5
    fold_seed: int = 0
    scrambled_control: bool = True  # Neuron->Voxel with the images shuffled: must score ~0
    scramble_seed: int = 0
    # The miniature NSD (config "synthetic" only).
    synthetic: bool = False
    synthetic_seed: int = 0
    synthetic_sessions: int = 3
    synthetic_shape: tuple = (20, 24, 18)
    synthetic_features: int = 32
    synthetic_feature_prob: float = 0.05
    synthetic_mixed_neurons: int = 16
    synthetic_train_rows: int = 20_000


def nsd() -> BrainConfig:
    """The paper's setting: subjects 1, 2, 5, 7, streams "ventral", ResNet50 and ViT-B/16."""
    return BrainConfig()


def synthetic() -> BrainConfig:
    """A miniature NSD with known features: two "DNNs" (the features, and a superposed mix)."""
    return dataclasses.replace(
        BrainConfig(),
        name="synthetic",
        dnns=("features", "mixed"),
        sae_expansion=(2, 4),
        sae_k=(4, 4),
        sae_epochs=30,
        sae_batch_size=64,
        synthetic=True,
    )


CONFIGS = {"nsd": nsd, "synthetic": synthetic}


def get_config(name: str = "nsd") -> BrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; configs are {sorted(CONFIGS)}")
    return CONFIGS[name]()
