"""superalign: superposition disentanglement and representational alignment in JAX.

Implements Longon, Klindt & Khosla (2025), "Superposition disentanglement of neural
representations reveals hidden alignment". Library functions are pure; experiments live in
``experiments/``.
"""

__version__ = "0.1.0"

from superalign import (
    analysis,
    brain,
    datasets,
    features,
    models,
    recovery,
    sae,
    sharding,
    theory,
    toy,
    training,
)
from superalign.analysis import (
    arrangement_best_match,
    feature_norms,
    feature_recovery,
    n_directions,
    n_represented,
    shared_features,
)
from superalign.cka import cka
from superalign.compare import Comparison, compare
from superalign.features import DataSpec, importance
from superalign.matching import (
    permutation_score,
    semi_matching,
    soft_and_semi_matching,
    soft_matching,
)
from superalign.recovery import lasso, omp
from superalign.regression import ridge_regression
from superalign.rotation import rotation_score
from superalign.rsa import rsa
from superalign.sae import SAEConfig, SAEParams, dnn_config, toy_config
from superalign.toy import ToyConfig, ToyParams
