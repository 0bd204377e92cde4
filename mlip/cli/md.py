"""``mlip md MODEL STRUCTURE -o OUT.xyz``: molecular dynamics that records every target of the model.

Velocity Verlet (``--ensemble nve``), Langevin (``nvt``) or the Bussi–Donadio–Parrinello stochastic
velocity rescaling thermostat (``csvr``, ASE's ``Bussi``). Every ``--record-every`` steps one extxyz
frame is appended to the output and flushed: positions, momenta, ``md_step``, ``time_fs``,
``temperature_K`` (info), and the model's predictions under the keys ``mlip predict`` writes
(``MLIP_energy``, ``MLIP_energies``, ``MLIP_forces``, ``MLIP_stress`` for periodic cells,
``MLIP_<tensor>``: e.g. ``MLIP_dipole`` and ``MLIP_polarizability`` along the run). With
``--committee MODEL …`` the MD follows the mean of several models and the frames also record their
spread (``MLIP_energy_std``, ``MLIP_forces_std`` per atom, ``MLIP_<tensor>_std``), and
``--stop-forces-std X`` ends the run at the first step where an atom's force spread exceeds X eV/Å
(that step is written as the last frame: a structure to label). A killed run
leaves the frames written so far; ``--restart OUT.xyz`` continues from its last complete frame
(positions and momenta; a partly written last frame is dropped) and appends until ``--steps``
steps in total.

``--electric-field EX,EY,EZ`` (V/Å, for a dipole in e·Å) runs the MD in a uniform electric field
coupled through the model's dipole: energy ``U − μ·E``, forces ``F + Zᵀ E`` (Born charges ``Z``;
:class:`~mlip.calculators.ase_calculator.MLIPCalculator`); the frames record the field
(``electric_field`` info) and ``MLIP_energy``/``MLIP_forces`` include its terms. A restart keeps the
field of the file's last frame unless ``--electric-field`` is given.

Temperatures: ``--temperature T`` is the thermostat's target (nvt, csvr) or the intended average
temperature (nve). Initial velocities are drawn (Maxwell–Boltzmann, no centre-of-mass motion, no
rotation for molecules) at ``--initial-temperature``, by default ``T`` with a thermostat and ``2 T``
in NVE (near a minimum about half of the kinetic energy goes into potential energy).
"""

from __future__ import annotations

import io
import os
import time

import numpy as np

from mlip.errors import MLIPError

ENSEMBLES = ("nve", "nvt", "csvr")


def draw_velocities(atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature_K`` without centre-of-mass motion (and, for
    molecules, without rotation). Uses ASE's ``thermalize_momenta`` (ASE ≥ 3.29; the older
    ``MaxwellBoltzmannDistribution`` is deprecated there) and falls back on older ASE."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not any(atoms.pbc):
        ZeroRotation(atoms)


def initial_temperature(ensemble: str, temperature: float, initial: float | None) -> float:
    """Temperature the initial velocities are drawn at (see the module docstring)."""
    if initial is not None:
        return initial
    return 2.0 * temperature if ensemble == "nve" else temperature


def parse_field(text: str | None) -> np.ndarray | None:
    """``"0,0,0.1"`` → ``array([0, 0, 0.1])`` (V/Å); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        field = np.array([float(p) for p in text.split(",")])
    except ValueError:
        field = np.array([])
    if field.shape != (3,) or not np.all(np.isfinite(field)):
        raise MLIPError(f"--electric-field: expected three numbers in V/Å like 0,0,0.1, got {text!r}")
    return field


def parse_supercell(text: str | None) -> tuple[int, int, int] | None:
    """``"2,2,1"`` → ``(2, 2, 1)``; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        reps = tuple(int(p) for p in parts)
    except ValueError:
        reps = ()
    if len(reps) != 3 or min(reps) < 1:
        raise MLIPError(f"--supercell: expected three positive integers like 2,2,1, got {text!r}")
    return reps  # type: ignore[return-value]


def complete_frames(path: str) -> tuple[int, int]:
    """``(number of complete extxyz frames, their length in bytes)`` at the start of ``path``.

    A frame is complete when its atom-count line, comment line and every atom line (each ending in a
    newline) are there; whatever follows the last complete frame is a partly written one.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    pos, offset, frames = 0, 0, 0
    while pos < len(lines) - 1:  # the last element is what follows the final newline
        try:
            n = int(lines[pos].strip())
        except ValueError:
            break
        end = pos + 2 + n
        if end > len(lines) - 1:
            break
        offset += sum(len(line) + 1 for line in lines[pos:end])
        pos, frames = end, frames + 1
    return frames, offset


def _restart_state(path: str):
    """The last complete frame of an ``mlip md`` output (truncating a partly written one)."""
    import ase.io

    if not os.path.isfile(path):
        raise MLIPError(f"{path}: restart file not found")
    frames, offset = complete_frames(path)
    if frames == 0:
        raise MLIPError(f"{path}: no complete frame to restart from")
    if offset < os.path.getsize(path):
        with open(path, "r+b") as handle:
            handle.truncate(offset)
        print(f"mlip: {path}: dropped a partly written last frame", flush=True)
    try:
        atoms = ase.io.read(path, index=frames - 1, format="extxyz")
    except Exception as err:  # one line for the user
        raise MLIPError(f"{path}: cannot read the last frame ({err})") from None
    if "md_step" not in atoms.info or "momenta" not in atoms.arrays:
        raise MLIPError(f"{path}: last frame has no md_step or momenta (not written by mlip md)")
    step = int(atoms.info["md_step"])
    field = atoms.info.get("electric_field")
    atoms.calc = None
    for key in [k for k in atoms.arrays if k.startswith("MLIP_")]:
        del atoms.arrays[key]
    atoms.info = {}
    return atoms, step, frames, (None if field is None else np.asarray(field, dtype=np.float64))


def _frame(atoms, calc, step: int, timestep_fs: float):
    """A copy of ``atoms`` with momenta, step, time, temperature and the model's predictions."""
    from mlip.cli.predict import store_predictions, store_spreads
    from mlip.outputs import ENERGY, FORCES, NODE_ENERGY, STRESS

    frame = atoms.copy()
    frame.calc = None
    frame.info = {"md_step": int(step), "time_fs": float(step * timestep_fs)}
    frame.info["temperature_K"] = float(atoms.get_temperature())
    frame.set_momenta(atoms.get_momenta())
    field = calc.electric_field
    if field is not None:
        frame.info["electric_field"] = field
    values = {}
    if calc.has_energy:
        values[ENERGY] = calc.get_property("energy", atoms)
        values[NODE_ENERGY] = calc.get_property("energies", atoms)
        values[FORCES] = calc.get_property("forces", atoms)
        if np.all(atoms.pbc) and field is None:  # no stress under a field
            values[STRESS] = calc.get_property("stress", atoms)
    for name in calc.tensor_names:
        values[name] = calc.get_property(name, atoms)
    per_atom = {s.name for s in calc.model.target_specs if s.per_atom}
    store_predictions(frame, values, per_atom)
    if hasattr(calc, "members"):  # a committee: its spread too, under the keys mlip predict writes
        store_spreads(frame, {key: calc.get_property(key, atoms) for key in calc.spread_names}, per_atom)
    return frame


def _spread_above(calc, atoms, limit: float | None) -> float | None:
    """The committee's largest per-atom force spread (eV/Å) if it exceeds ``limit``, else None."""
    if limit is None:
        return None
    largest = float(np.max(calc.get_property("forces_std", atoms)))
    return largest if largest > limit else None


def _append(handle, frame) -> None:
    """Append one extxyz frame in a single write and flush it to disk."""
    import ase.io

    buffer = io.StringIO()
    ase.io.write(buffer, frame, format="extxyz")
    handle.write(buffer.getvalue())
    handle.flush()
    os.fsync(handle.fileno())


def run_md(
    model_path: str,
    structure: str | None,
    output: str | None,
    steps: int = 1000,
    timestep: float = 0.5,
    temperature: float = 300.0,
    initial_temp: float | None = None,
    ensemble: str = "nvt",
    friction: float = 0.01,
    taut: float = 100.0,
    index: int = 0,
    supercell: str | None = None,
    seed: int = 0,
    record_every: int = 10,
    dtype: str = "float64",
    device: str = "auto",
    restart: str | None = None,
    skin: float = 1.0,
    progress: bool = True,
    electric_field: str | None = None,
    committee: tuple[str, ...] | list[str] = (),
    stop_forces_std: float | None = None,
) -> None:
    """Run MD and append a frame to ``output`` every ``record_every`` steps (see the module docstring).

    ``committee``: more model paths; the MD then follows the committee's mean forces and the frames
    also record its spread (``MLIP_energy_std``, ``MLIP_forces_std``, ``MLIP_<tensor>_std``).
    ``stop_forces_std`` (eV/Å, needs a committee): stop after the first step at which an atom's force
    spread exceeds it, and write that step as the last frame."""
    from ase import units
    from tqdm import tqdm

    from mlip.calculators.ase_calculator import MLIPCalculator
    from mlip.cli.predict import check_writable
    from mlip.data.reading import read_atoms

    if ensemble not in ENSEMBLES:
        raise MLIPError(f"--ensemble must be one of {', '.join(ENSEMBLES)}, got {ensemble!r}")
    if steps < 0 or record_every < 1:
        raise MLIPError(f"--steps must be >= 0 and --record-every >= 1 (got {steps}, {record_every})")
    if not timestep > 0 or not temperature >= 0 or not friction >= 0 or not taut > 0:
        raise MLIPError("--timestep and --taut must be > 0, --temperature and --friction >= 0")
    if stop_forces_std is not None and not (committee and stop_forces_std > 0):
        raise MLIPError("--stop-forces-std needs --committee (two or more models) and a value > 0 eV/Å")
    if restart is None and structure is None:
        raise MLIPError("give a STRUCTURE file, or --restart OUT.xyz to continue a run")
    output = output or restart
    if output is None:
        raise MLIPError("give the output file with -o OUT.xyz")
    check_writable(output)
    reps = parse_supercell(supercell)
    field = parse_field(electric_field)

    if restart is not None:
        atoms, start_step, frames, previous_field = _restart_state(restart)
        if field is None and previous_field is not None:
            field = previous_field
            print(f"mlip: md: keeping the electric field of {restart}: {field.tolist()} V/Å", flush=True)
        if os.path.abspath(restart) != os.path.abspath(output):
            frames = 0
        rng = np.random.default_rng([seed, start_step])  # a restart at step s draws the same noise
        print(f"mlip: md: continuing {restart} from step {start_step}", flush=True)
    else:
        structures = read_atoms(structure)
        if not -len(structures) <= index < len(structures):
            raise MLIPError(f"{structure}: --index {index} out of range ({len(structures)} structures)")
        atoms = structures[index]
        atoms.calc = None
        if reps:
            atoms = atoms.repeat(reps)
        start_step, frames = 0, 0
        rng = np.random.default_rng(seed)
    if committee:
        from mlip.calculators.committee import MLIPCommitteeCalculator

        calc = MLIPCommitteeCalculator([model_path, *committee], device=device, dtype=dtype, skin=skin)
    else:
        calc = MLIPCalculator(model_path, device=device, dtype=dtype, skin=skin)
    if not calc.has_energy:
        raise MLIPError(f"{model_path}: the model has no energy target, so it gives no forces for MD")
    try:
        calc.electric_field = field
    except MLIPError as err:
        raise MLIPError(f"{model_path}: --electric-field: {err}") from None
    atoms.calc = calc
    if restart is None:
        start_t = initial_temperature(ensemble, temperature, initial_temp)
        draw_velocities(atoms, start_t, rng)
        print(f"mlip: md: {ensemble.upper()}, initial velocities drawn at {start_t:.1f} K", flush=True)

    dt = timestep * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, dt)
    elif ensemble == "nvt":
        from ase.md.langevin import Langevin

        dyn = Langevin(
            atoms, dt, temperature_K=temperature, friction=friction / units.fs, rng=rng, fixcm=False
        )
    else:
        try:
            from ase.md.bussi import Bussi
        except ImportError:  # ASE < 3.23
            raise MLIPError("--ensemble csvr needs ASE >= 3.23 (ase.md.bussi)") from None
        dyn = Bussi(atoms, dt, temperature_K=temperature, taut=taut * units.fs, rng=rng)

    remaining = max(0, steps - start_step)
    mode = "a" if restart is not None and frames else "w"
    step = start_step
    start = time.perf_counter()
    stopped = _spread_above(calc, atoms, stop_forces_std)
    with open(output, mode) as handle:
        if restart is None:
            _append(handle, _frame(atoms, calc, step, timestep))
            frames += 1
        bar = tqdm(total=remaining, disable=not progress, desc="md", unit="step")
        while step < steps and stopped is None:
            n = min(record_every - step % record_every, steps - step)
            if stop_forces_std is None:
                dyn.run(n)
                step += n
                bar.update(n)
            else:  # one step at a time, checking the committee's spread after each
                for _ in range(n):
                    dyn.run(1)
                    step += 1
                    bar.update(1)
                    stopped = _spread_above(calc, atoms, stop_forces_std)
                    if stopped is not None:
                        break
            frame = _frame(atoms, calc, step, timestep)
            if step % record_every == 0 or step == steps or stopped is not None:
                _append(handle, frame)
                frames += 1
            epot = frame.info.get("MLIP_energy", float("nan"))
            etot = epot + atoms.get_kinetic_energy()
            t = frame.info["temperature_K"]
            if progress:
                bar.set_postfix(T=f"{t:.1f} K", Epot=f"{epot:.4f}", Etot=f"{etot:.4f}")
            else:
                print(f"step {step:8d}  T {t:8.1f} K  Epot {epot:.6f} eV  Etot {etot:.6f} eV", flush=True)
        bar.close()
    if stopped is not None:
        print(
            f"mlip: md: stopped at step {step}: the committee's largest per-atom force spread is "
            f"{stopped:.4g} eV/Å > --stop-forces-std {stop_forces_std:g} (that step is the last frame of "
            f"{output})",
            flush=True,
        )
    elapsed = time.perf_counter() - start
    done = step - start_step
    print(
        f"mlip: md: {done} steps of {len(atoms)} atoms in {elapsed:.1f} s "
        f"({1000 * elapsed / max(done, 1):.2f} ms/step); {frames} frames in {output}",
        flush=True,
    )
