"""Export an energy model as a self-contained program for MD engines (LAMMPS, ...).

``mlip export MODEL -o model.pt2`` writes a ``torch.export`` program (``torch.export.load`` in plain
torch runs it: no mlip and no Python model code needed); ``--aoti`` writes an AOTInductor package
instead (compiled C++/machine code, for ``torch::inductor::AOTIModelPackageLoader`` in C++ or
``torch._inductor.aoti_load_package`` in Python).

Contract (``N`` atoms given, ``N_local`` of them local, ``E`` directed edges; both programs)::

    atomic_energies, edge_forces = program(species, edge_index, edge_vectors, n_local)

=================  ==============  =============================================================
input              shape, dtype    meaning
=================  ==============  =============================================================
``species``        ``[N]`` int64   atomic numbers (only the model's elements, see metadata)
``edge_index``     ``[2, E]``      row 0 = receiving (central) atom ``i``, row 1 = neighbour ``j``,
                   int64           every pair within the cutoff in both directions (mlip's graph
                                   convention, :mod:`mlip.data.graph`); indices in ``[0, N)``
``edge_vectors``   ``[E, 3]``      ``r_e = r_j − r_i`` (Å, with the periodic image of ``j``), in
                   float           the exported dtype; every edge shorter than the cutoff, none 0
``n_local``        ``[]`` int64    the first ``n_local`` atoms are local; atoms ``n_local..N−1``
                                   are ghosts (periodic images, other MPI domains)
=================  ==============  =============================================================

=================  ==============  =============================================================
output             shape           meaning
=================  ==============  =============================================================
``atomic_energies`` ``[N]``      eV, E0s included, for the local atoms (their sum is the energy);
                                   0 for the ghosts
``edge_forces``    ``[E, 3]``      ``∂E_local/∂r_e`` (eV/Å), ``E_local`` = sum of the local energies
=================  ==============  =============================================================

The engine assembles forces and virial from the edge forces (``r_e = r_j − r_i``)::

    F_i += ∂E/∂r_e,   F_j −= ∂E/∂r_e        for every edge e = (i, j)
    W   = −Σ_e r_e ⊗ ∂E/∂r_e                (virial, eV; stress σ = −W / V)

Forces on ghost atoms are then sent back to their owners (LAMMPS ``newton on``), which makes the
sum exact. The program computes the energies of *all* ``N`` atoms and sums only the local ones:
with ``T`` message-passing layers (metadata ``num_layers``) the energy of a local atom depends on
atoms up to ``T × cutoff`` away, so ghost atoms must reach that far and every atom within
``(T − 1) × cutoff`` of a local atom must have all its edges in ``edge_index`` (ghosts farther out
only act as neighbours). A single-domain periodic cell without ghosts (neighbour images through
``edge_vectors``, all atoms local) needs none of this.

Shapes are dynamic: any ``N ≥ 2``, ``E ≥ 2`` (the engine may pad with a far ghost atom and edges
longer than the cutoff, which contribute exactly zero). Tensor heads (dipole, polarizability) are
not exported. The metadata (``cutoff``, ``species``, ``num_layers``, ``dtype``, ``e0s``, format
version) is stored with the program (``.pt2`` extra file ``mlip_metadata.json``; AOTInductor:
``get_metadata()`` keys ``mlip_*``).
"""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from mlip.errors import MLIPError
from mlip.model.potential import MLIPModel

EXPORT_FORMAT_VERSION = 1
METADATA_FILE = "mlip_metadata.json"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class LocalEnergyModel(nn.Module):
    """The exported function as a plain module (eager; scatter path): see the module docstring.

    ``forward(species [N], edge_index [2, E], edge_vectors [E, 3], n_local [])`` →
    ``(atomic_energies [N] eV (ghosts 0), edge_forces [E, 3] eV/Å)``.
    """

    def __init__(self, model: MLIPModel) -> None:
        super().__init__()
        if not model.has_energy:
            raise MLIPError("model has no energy head: only energy models can be exported")
        self.model = model

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_local: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        with torch.enable_grad():
            index = model.species_index(species)
            features, _ = model.backbone(index, edge_index, edge_vectors)
            interaction, e0 = model.atomic_energy_parts(features, index, edge_index, edge_vectors)
            energies = interaction + e0.to(interaction.dtype)
            # a mask rather than energies[:n_local]: no data-dependent shape, which AOTInductor
            # cannot lower
            is_local = torch.arange(energies.shape[0], device=energies.device) < n_local
            local = torch.where(is_local, energies, torch.zeros_like(energies))
            (edge_forces,) = torch.autograd.grad(local.sum(), edge_vectors)
        return local.detach(), edge_forces


def example_inputs(model: MLIPModel, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with: 7 atoms (5 local) of the model's elements, all pairs within the cutoff.

    Sizes are distinct from each other and from 0, 1 and 3, so that tracing makes no dimension
    static or equal to another one.
    """
    generator = torch.Generator().manual_seed(0)
    n_atoms = 7
    positions = torch.randn(n_atoms, 3, generator=generator, dtype=torch.float64)
    positions *= 0.3 * model.cutoff / positions.norm(dim=1, keepdim=True).clamp_min(1.0)
    i, j = torch.meshgrid(torch.arange(n_atoms), torch.arange(n_atoms), indexing="ij")
    keep = i != j
    edge_index = torch.stack([i[keep], j[keep]])
    edge_vectors = (positions[edge_index[1]] - positions[edge_index[0]]).to(dtype)
    species = torch.tensor(model.species, dtype=torch.long)[torch.arange(n_atoms) % len(model.species)]
    return species, edge_index, edge_vectors, torch.tensor(5, dtype=torch.long)


def export_program(model: MLIPModel, dtype: str = "float64") -> torch.export.ExportedProgram:
    """The ``torch.export`` program of the contract above, with dynamic ``N`` and ``E``.

    The model is copied (the caller's is left alone) and run on the scatter path, whose shapes
    depend on the inputs' sizes only. ``torch.export`` cannot trace ``torch.autograd.grad`` itself,
    so the function (energies and their gradient) is first traced to an ATen graph by ``make_fx``
    with symbolic shapes, and that graph is exported.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    if dtype not in _DTYPES:
        raise MLIPError(f"dtype must be float32 or float64, got {dtype!r}")
    model = copy.deepcopy(model).to(device="cpu", dtype=_DTYPES[dtype]).eval()
    model.backbone.allow_padding = False
    model.tensor_heads = None
    for p in model.parameters():
        p.requires_grad_(False)
    function = LocalEnergyModel(model)
    inputs = example_inputs(model, _DTYPES[dtype])
    function(*inputs)  # fills the model's per-dtype caches with real tensors before tracing
    graph = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
    atoms = torch.export.Dim("n_atoms", min=2)
    edges = torch.export.Dim("n_edges", min=2)
    dynamic = ({0: atoms}, {1: edges}, {0: edges}, None)
    return torch.export.export(graph, inputs, dynamic_shapes=dynamic, strict=False)


def export_metadata(model: MLIPModel, dtype: str) -> dict[str, str]:
    """What an engine needs besides the program: cutoff (Å), elements, layers, dtype, E0s (eV)."""
    from mlip import __version__

    return {
        "format": "mlip-export",
        "format_version": str(EXPORT_FORMAT_VERSION),
        "mlip_version": __version__,
        "cutoff": repr(float(model.cutoff)),
        "species": " ".join(str(z) for z in model.species),
        "num_layers": str(len(model.backbone.layers)),
        "dtype": dtype,
        "e0s": json.dumps({str(z): v for z, v in model.hyperparameters["e0s"].items()}),
    }


def save_export(
    model: MLIPModel, path: str, dtype: str = "float64", aoti: bool = False, threads: int = 1
) -> None:
    """Write the program to ``path`` (``.pt2``): ``torch.export`` format, or AOTInductor with ``aoti``.

    ``threads`` (AOTInductor only): the compiled kernels' OpenMP threads, fixed at compile time
    (inductor's ``cpp.threads``; otherwise it takes the exporting process's thread count). 1, the
    default, compiles serial kernels: for one MPI rank per core, and the fastest on small systems
    (BENCHMARKS.md, LAMMPS). Written to a temporary file in the same folder and renamed, so ``path``
    is never partial.
    """
    from mlip.io import atomic_write_bytes_via, atomic_write_path_via

    program = export_program(model, dtype)
    metadata = export_metadata(model, dtype)
    if not aoti:
        extra = {METADATA_FILE: json.dumps(metadata, indent=1)}
        atomic_write_bytes_via(path, lambda handle: torch.export.save(program, handle, extra_files=extra))
        return
    from torch._inductor import aoti_compile_and_package

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    metadata["aoti_threads"] = str(threads)
    configs = {"aot_inductor.metadata": {f"mlip_{k}": v for k, v in metadata.items()}, "cpp.threads": threads}
    atomic_write_path_via(
        path,
        lambda tmp: aoti_compile_and_package(program, package_path=tmp, inductor_configs=configs),
        suffix=".pt2",  # the package writer wants the extension
    )


def load_export_metadata(path: str) -> dict[str, str]:
    """The metadata of a ``.pt2`` written without ``--aoti`` (plain torch: ``torch.export.load``)."""
    extra = {METADATA_FILE: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[METADATA_FILE])
