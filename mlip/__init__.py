"""mlip: machine-learned interatomic potentials and tensorial properties from a scalar backbone.

Architecture: ``mlip.data`` (files → graphs) → ``mlip.model`` (backbone, heads, λ-bases) →
``mlip.training`` (config, losses, trainer, checkpoints) → ``mlip.calculators`` (ASE) →
``mlip.cli`` (``mlip train|eval|predict``).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["MLIPCalculator", "MLIPCommitteeCalculator", "MLIPModel", "load_model", "__version__"]


def __getattr__(name: str):  # lazy imports keep ``import mlip`` fast
    if name == "MLIPCalculator":
        from mlip.calculators.ase_calculator import MLIPCalculator

        return MLIPCalculator
    if name == "MLIPCommitteeCalculator":
        from mlip.calculators.committee import MLIPCommitteeCalculator

        return MLIPCommitteeCalculator
    if name in ("MLIPModel", "load_model"):
        from mlip.model import potential

        return getattr(potential, name)
    raise AttributeError(name)
