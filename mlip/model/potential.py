"""The full model: backbone → heads → energy, forces, stress (and tensor targets).

``E = Σ_i (scale · ε_i + shift + E0[Z_i])`` in eV; ``F = −∂E/∂r`` (eV/Å) and the stress
``σ = (1/V) ∂E/∂ε`` (eV/Å³, ASE sign: positive when the cell wants to shrink... i.e. the
derivative of the energy with respect to a symmetric strain ε applied as r ↦ r(1+ε),
cell ↦ cell(1+ε)), both by autograd, so they are exact derivatives of the predicted energy.
The virial is ``W = −V σ``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlip.model.backbone import ScalarBackbone
from mlip.model.charges import PartialChargeDipole, refuse_periodic
from mlip.model.heads import EnergyHead
from mlip.outputs import ENERGY, FORCES, NODE_ENERGY, STRESS, VIRIAL
from mlip.targets import TargetSpec

MODEL_FORMAT_VERSION = 1


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = values.new_zeros((size, *values.shape[1:]))
    return out.index_add(0, index, values)


def stress_from_strain_derivative(
    dE_deps: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor | None
) -> torch.Tensor:
    """``σ = (1/V) ∂E/∂ε`` ``[G, 3, 3]`` (eV/Å³) where the cell is periodic along x, y and z.

    Other structures (molecules, slabs, wires) have no volume and get zeros, never a division by
    a clamped volume; the loss and metrics leave them out (``stress_mask``).
    """
    periodic = periodic_graphs(cell, pbc)
    volume = torch.linalg.det(cell).abs()
    safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
    stress = dE_deps / safe_volume.view(-1, 1, 1)
    return torch.where(periodic.view(-1, 1, 1), stress, torch.zeros_like(stress))


def periodic_graphs(cell: torch.Tensor, pbc: torch.Tensor | None) -> torch.Tensor:
    """``[G]`` bool: periodic along all three axes with a non-degenerate cell."""
    volume = torch.linalg.det(cell).abs()
    ok = volume > 1e-6 * torch.linalg.norm(cell, dim=-1).prod(-1).clamp_min(1.0)
    if pbc is not None:
        ok = ok & pbc.view(-1, 3).all(dim=-1).to(ok.device)
    return ok


def _drop_legacy_e0_buffer(state_dict: dict, prefix: str, *args: Any) -> None:
    state_dict.pop(prefix + "e0", None)


class MLIPModel(nn.Module):
    """Energy model with optional tensor heads.

    Args:
        species: atomic numbers the model knows, e.g. ``[1, 6, 8]``.
        cutoff: Å.
        e0s: atomic reference energies, atomic number → eV.
        scale: eV, multiplies the network's atomic energies.
        shift: eV per atom.
        targets: the target specs (energy/forces/stress and tensor targets).
        backbone: keyword arguments of :class:`~mlip.model.backbone.ScalarBackbone`.
        readout_hidden: width of the energy head MLP.
        tensor: keyword arguments of the tensor heads (see :mod:`mlip.model.tensor_heads`).
        pair_repulsion: keyword arguments of a learned short-range pair repulsion added to the
            atomic energies (:class:`~mlip.model.pair.PairRepulsion`; ``{}`` for its defaults), or
            ``None`` for none.
        loss_scales: training-set loss normalisation per target and block (see
            :mod:`mlip.training.loss`); kept with the model so that resuming and evaluation use
            the values training used. Not used by ``forward``.
        label_means: per-component training-label means of each metric quantity: the mean
            predictor ``mlip eval`` reports. Not used by ``forward``.
    """

    def __init__(
        self,
        species: list[int],
        cutoff: float,
        e0s: dict[int, float] | None = None,
        scale: float = 1.0,
        shift: float = 0.0,
        targets: list[dict] | None = None,
        backbone: dict[str, Any] | None = None,
        readout_hidden: int = 64,
        tensor: dict[str, Any] | None = None,
        pair_repulsion: dict[str, Any] | None = None,
        loss_scales: dict[str, list[float]] | None = None,
        label_means: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        species = sorted(int(z) for z in species)
        backbone = dict(backbone or {})
        tensor = dict(tensor or {})
        targets = list(targets or [{"name": "energy", "kind": "energy", "key": "energy"}])
        self.hyperparameters = {
            "species": species,
            "cutoff": float(cutoff),
            "e0s": {int(z): float(v) for z, v in (e0s or {}).items()},
            "scale": float(scale),
            "shift": float(shift),
            "targets": targets,
            "backbone": backbone,
            "readout_hidden": readout_hidden,
            "tensor": tensor,
            "pair_repulsion": None if pair_repulsion is None else dict(pair_repulsion),
            "loss_scales": {str(k): [float(x) for x in v] for k, v in (loss_scales or {}).items()},
            "label_means": {str(k): [float(x) for x in v] for k, v in (label_means or {}).items()},
        }
        self.species = species
        self.cutoff = float(cutoff)
        self.target_specs = [TargetSpec.from_dict(t) for t in targets]
        z_to_index = torch.full((119,), -1, dtype=torch.long)
        z_to_index[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("z_to_index", z_to_index, persistent=False)
        # E0s have one source of truth, ``hyperparameters["e0s"]`` (exact float64 values; see
        # :attr:`e0`). Files written before this had an ``e0`` buffer: it is dropped on loading.
        self._register_load_state_dict_pre_hook(_drop_legacy_e0_buffer)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.backbone = ScalarBackbone(num_species=len(species), cutoff=cutoff, **backbone)
        num_layers = len(self.backbone.layers)
        self.has_energy = any(s.kind in ("energy", "forces", "stress") for s in self.target_specs)
        self.energy_head = EnergyHead(self.backbone.channels, num_layers, readout_hidden)
        self.pair_repulsion: nn.Module | None = None
        if pair_repulsion is not None:
            from mlip.model.pair import PairRepulsion

            self.pair_repulsion = PairRepulsion(species, **pair_repulsion)
        tensor_specs = [s for s in self.target_specs if s.is_tensor]
        self.tensor_heads: nn.Module | None = None
        if tensor_specs:
            from mlip.model.tensor_heads import TensorHeads

            self.tensor_heads = TensorHeads(
                self.backbone.channels, self.backbone.lmax, tensor_specs, **tensor
            )
        # learned partial charges × positions added to molecular dipoles (``charges: true``)
        self.charge_dipoles = nn.ModuleDict()
        for spec in tensor_specs:
            if spec.charges:
                scale = float((tensor.get("scales") or {}).get(spec.name, 1.0))
                self.charge_dipoles[spec.name] = PartialChargeDipole(
                    self.backbone.channels, int(tensor.get("hidden", 64)), scale
                )

    # ------------------------------------------------------------------ helpers
    @property
    def e0(self) -> torch.Tensor:
        """``[S]`` float64 atomic reference energies (eV) in species order, from the hyperparameters."""
        return self._e0_float64(self.scale.device)

    def _e0_float64(self, device: torch.device) -> torch.Tensor:
        cached = getattr(self, "_e0_cache", None)
        if cached is None or cached.device != device:
            values = [float(self.hyperparameters["e0s"].get(z, 0.0)) for z in self.species]
            cached = torch.tensor(values, dtype=torch.float64, device=device)
            self._e0_cache = cached
        return cached

    def atomic_energy_parts(
        self,
        features: list[torch.Tensor],
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies as ``(interaction [N] in the model's dtype, E0 [N] float64)``, eV, from
        the backbone's features, species indices and (for the pair repulsion, if any) the edges
        ``[2, E]`` and edge vectors ``[E, 3]``: an atom's energy is their sum. Kept apart so totals
        can accumulate in float64 (:meth:`forward`); :mod:`mlip.model.export` uses it too."""
        interaction = self.scale * self.energy_head(features) + self.shift
        if self.pair_repulsion is not None:
            interaction = interaction + self.pair_repulsion(species, edge_index, edge_vectors)
        return interaction, self._e0_float64(interaction.device)[species]

    @property
    def tensor_target_names(self) -> list[str]:
        return [s.name for s in self.target_specs if s.is_tensor]

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers ``[N]`` → species indices ``[N]`` (−1 for unknown elements)."""
        return self.z_to_index[numbers]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        data: Any,
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Predict every target for a batch.

        Args:
            data: a ``torch_geometric`` ``Data``/``Batch`` with ``pos`` [N,3], ``numbers`` [N],
                ``edge_index`` [2,E], ``unit_shifts`` [E,3], ``cell`` [G,3,3] and ``batch`` [N]
                (absent for a single structure).
            compute_forces: also return ``forces`` [N,3] (eV/Å).
            compute_stress: also return ``virial`` [G,3,3] (eV) and ``stress`` [G,3,3] (eV/Å³;
                zeros for structures not periodic along x, y and z, which have no stress).
            training: keep the graph of the derivatives (for losses on forces/stress).

        Returns:
            ``energy`` [G] eV, ``node_energy`` [N] eV, optionally ``forces``, ``stress``,
            ``virial``, and every tensor target (per structure [G, ...] or per atom [N, ...]).
        """
        pos = data.pos
        n_atoms = pos.shape[0]
        batch = getattr(data, "batch", None)
        if batch is None:
            batch = torch.zeros(n_atoms, dtype=torch.long, device=pos.device)
        cell = data.cell.view(-1, 3, 3)
        num_graphs = cell.shape[0]
        receivers, senders = data.edge_index[0], data.edge_index[1]

        need_grad = (compute_forces or compute_stress) and self.has_energy
        # tensor outputs need an autograd graph only in training or when the caller differentiates
        # them (positions that already require grad, e.g. Born charges); otherwise they are computed
        # without one, and the energy graph is not kept for them
        tensors_need_graph = self.tensor_heads is not None and (training or pos.requires_grad)
        strain = None
        if need_grad:
            pos = pos.detach().requires_grad_(True) if not pos.requires_grad else pos
        if compute_stress and self.has_energy:
            strain = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos_strained = pos + torch.bmm(pos.unsqueeze(1), sym[batch]).squeeze(1)
            cell = cell + torch.bmm(cell, sym)
        else:
            pos_strained = pos
        shifts = torch.bmm(data.unit_shifts.unsqueeze(1), cell[batch[receivers]]).squeeze(1)
        edge_vectors = pos_strained[senders] - pos_strained[receivers] + shifts

        species = self.species_index(data.numbers)
        features, density = self.backbone(species, data.edge_index, edge_vectors)

        out: dict[str, torch.Tensor] = {}
        if self.has_energy:
            # E0s come from the exact float64 values in the hyperparameters (a float32 buffer would
            # round them), and totals accumulate in float64: a float32 model
            # still gives the total of 10⁵ atoms (≈ −10⁸ eV of reference energies) to below a meV.
            interaction, e0_64 = self.atomic_energy_parts(features, species, data.edge_index, edge_vectors)
            node_energy = interaction + e0_64.to(interaction.dtype)
            energy = _scatter_sum(interaction.double() + e0_64, batch, num_graphs)
            out[ENERGY] = energy
            out[NODE_ENERGY] = node_energy
            if need_grad:
                inputs = [pos] + ([strain] if strain is not None else [])
                grads = torch.autograd.grad(
                    energy.sum(),
                    inputs,
                    create_graph=training,
                    retain_graph=training or tensors_need_graph,
                )
                if compute_forces:
                    out[FORCES] = -grads[0]
                if strain is not None:
                    dE_deps = grads[1]
                    out[VIRIAL] = -dE_deps
                    out[STRESS] = stress_from_strain_derivative(dE_deps, data.cell.view(-1, 3, 3), data.pbc)
        if self.tensor_heads is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and tensors_need_graph):
                out.update(self.tensor_heads(features, density, batch, num_graphs))
                for name, charge_dipole in self.charge_dipoles.items():
                    refuse_periodic(getattr(data, "pbc", None), name)
                    out[name] = out[name] + charge_dipole(features[-1], pos, batch, num_graphs)
        return out


def model_payload(model: MLIPModel) -> dict:
    """Plain dict (hyperparameters, weights, format version) that :func:`model_from_payload` reads."""
    from mlip import __version__

    return {
        "format": "mlip-model",
        "format_version": MODEL_FORMAT_VERSION,
        "mlip_version": __version__,
        "hyperparameters": model.hyperparameters,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_model(model: MLIPModel, path: str) -> None:
    """Write a self-contained model file (hyperparameters + weights), atomically."""
    from mlip.io import atomic_torch_save

    atomic_torch_save(model_payload(model), path)


def model_from_payload(payload: dict, source: str = "model") -> MLIPModel:
    """Rebuild a model from the dict written by :func:`save_model`."""
    from mlip.errors import MLIPError

    if not isinstance(payload, dict) or payload.get("format") != "mlip-model":
        raise MLIPError(f"{source}: not an mlip model file")
    version = payload.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise MLIPError(
            f"{source}: model format version {version} is not supported by this mlip "
            f"(expects {MODEL_FORMAT_VERSION}); re-export it with a matching mlip version"
        )
    try:
        model = MLIPModel(**payload["hyperparameters"])
        state = payload["state_dict"]
        # Build at the stored precision so float64 weights are not rounded through float32.
        stored = [v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
        if stored:
            model = model.to(stored[0])
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as err:  # damaged or foreign payloads raise many types: one line for all
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise MLIPError(f"{source}: not a valid mlip model ({type(err).__name__}: {first})") from None
    if missing or unexpected:
        raise MLIPError(
            f"{source}: weights do not match the architecture (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model


def load_model(path: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> MLIPModel:
    """Load a model file safely (``torch.load(weights_only=True)``: no code runs from the file)."""
    from mlip.io import safe_torch_load

    payload = safe_torch_load(path)
    if isinstance(payload, dict) and payload.get("format") == "mlip-checkpoint":
        payload = payload.get("model")
    model = model_from_payload(payload, source=str(path))
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device).eval()
