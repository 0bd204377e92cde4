"""Names of the model's outputs and of the graph fields shared by data, model, training and tools.

Tensor targets are outputs under their own target name (``dipole``, ``polarizability``, ...).
"""

from __future__ import annotations

ENERGY = "energy"  # [G] eV (float64 totals)
NODE_ENERGY = "node_energy"  # [N] eV, atomic energies
FORCES = "forces"  # [N, 3] eV/Å
STRESS = "stress"  # [G, 3, 3] eV/Å³, ASE sign; zeros where STRESS_MASK is False
VIRIAL = "virial"  # [G, 3, 3] eV, W = −∂E/∂ε (defined for every structure)
STRESS_MASK = "stress_mask"  # [G] bool graph field: the structure has a stress (label) at all
PREDICTION_PREFIX = "MLIP_"  # `mlip predict` writes MLIP_energy, MLIP_forces, MLIP_<tensor>, ...
