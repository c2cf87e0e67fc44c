"""superalign: superposition disentanglement and representational alignment in JAX.

Implements Longon, Klindt & Khosla (2025), "Superposition disentanglement of neural
representations reveals hidden alignment". Library functions are pure; experiments live in
``experiments/``.
"""

__version__ = "0.1.0"
