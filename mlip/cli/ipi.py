"""``mlip ipi MODEL --template STRUCTURE --unix NAME``: an i-PI force client.

Connects to a running i-PI server (``i-pi input.xml``) through its unix socket ``/tmp/ipi_NAME``
(``--unix NAME``, i-PI's ``<ffsocket mode='unix'><address>NAME</address>``) or over TCP
(``--address HOST --port N``, ``mode='inet'``) and computes energy, forces, virial and the model's
tensors (as i-PI ``extras``) for every bead i-PI sends; see :mod:`mlip.calculators.ipi`. Species,
atom order and periodicity come from ``--template`` (its first structure), e.g. i-PI's own
initial structure file; i-PI supplies positions and, for periodic templates, the cell.
"""

from __future__ import annotations

import time

from mlip.errors import MLIPError


def run_ipi(
    model_path: str,
    template: str,
    unix: str | None = None,
    address: str | None = None,
    port: int = 31415,
    device: str = "auto",
    dtype: str = "float64",
    max_steps: int | None = None,
    wait: float = 60.0,
    skin: float = 1.0,
) -> int:
    """Serve i-PI's force requests until it ends the run; returns the number of force evaluations."""
    from mlip.calculators.ase_calculator import MLIPCalculator
    from mlip.calculators.ipi import connect, run_client
    from mlip.data.reading import check_structure, normalise_pbc, read_atoms

    if (unix is None) == (address is None):
        raise MLIPError("give either --unix NAME (unix socket /tmp/ipi_NAME) or --address HOST --port N")
    if unix is not None and not unix.strip():
        raise MLIPError("--unix: empty socket name")
    if max_steps is not None and max_steps < 1:
        raise MLIPError(f"--max-steps must be >= 1, got {max_steps}")
    if not 0 < port < 65536:
        raise MLIPError(f"--port must be between 1 and 65535, got {port}")
    if not wait >= 0:
        raise MLIPError(f"--wait must be >= 0 s, got {wait}")
    calc = MLIPCalculator(model_path, device=device, dtype=dtype, skin=skin)
    if not calc.has_energy:
        raise MLIPError(f"{model_path}: the model has no energy target, so it gives no forces for i-PI")
    atoms = normalise_pbc(read_atoms(template)[0])
    atoms.calc = None
    check_structure(atoms, template, allowed_numbers=set(calc.model.species))
    atoms.calc = calc

    sock, where = connect(unix=unix, host=address or "localhost", port=port, wait=wait)
    periodic = "periodic" if all(atoms.pbc) else "not periodic: zero virial"
    extras = ", ".join(calc.tensor_names) or "none"
    print(f"mlip: ipi: connected to {where}; {len(atoms)} atoms ({periodic}); extras: {extras}", flush=True)
    start = time.perf_counter()
    done, reason = run_client(sock, atoms, max_steps=max_steps)
    elapsed = time.perf_counter() - start
    print(
        f"mlip: ipi: {reason}; {done} force evaluations in {elapsed:.1f} s "
        f"({1000 * elapsed / max(done, 1):.2f} ms each)",
        flush=True,
    )
    return done
