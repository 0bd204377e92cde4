"""``mlip`` command: train / preprocess / eval / predict / md / ipi / vibrations / spectrum / plot /
export; user errors become one line."""

from __future__ import annotations

import argparse
import sys

from mlip import __version__
from mlip.errors import MLIPError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlip", description="Machine-learned interatomic potentials and tensorial properties."
    )
    parser.add_argument("--version", action="version", version=f"mlip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config file (see configs/example.yaml)")
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config entry, e.g. -o training.max_epochs=2 (repeatable)",
    )

    p = sub.add_parser(
        "preprocess",
        help="write a config's data as a sharded on-disk store (data.preprocessed_dir) for large datasets",
    )
    p.add_argument("config", help="YAML config file; data.preprocessed_dir says where the store goes")
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config entry, e.g. -o data.preprocessed_dir=/scratch/store (repeatable)",
    )
    p.add_argument("--shard-size", type=int, default=10_000, help="structures per shard (default 10000)")
    p.add_argument(
        "--shard-megabytes", type=float, default=256.0, help="maximum shard size in MB (default 256)"
    )
    p.add_argument(
        "--compression",
        default="none",
        choices=["none", "gzip", "lzf"],
        help="HDF5 compression of the shards (default none: fastest random access)",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")

    p = sub.add_parser("eval", help="print MAE/RMSE of a model on a labelled structure file")
    p.add_argument("model", help="model.pt written by mlip train")
    p.add_argument("data", help="structure file (extxyz or any ase.io format)")
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="TARGET=KEY",
        help="label key of a target in this file, e.g. --key energy=REF_energy",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument(
        "--plot", metavar="PNG", default=None, help="also write a parity plot (one panel per target)"
    )

    p = sub.add_parser("predict", help="write model predictions into a copy of a structure file")
    p.add_argument("model", help="model.pt written by mlip train")
    p.add_argument("data", help="input structure file")
    p.add_argument("-o", "--output", required=True, help="output extxyz file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--born-charges",
        action="store_true",
        help="also write MLIP_born_charges (per atom, 9 numbers: dμ_a/dr_b) by autograd; needs a dipole",
    )
    p.add_argument(
        "--polarizability-derivatives",
        action="store_true",
        help="also write MLIP_polarizability_derivatives (per atom, 27 numbers: dα_ab/dr_c); needs a "
        "polarizability",
    )
    p.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        default=(),
        help="more models (e.g. other seeds): write the committee's mean under the MLIP_ keys and its "
        "spread as MLIP_energy_std, MLIP_forces_std (per atom) and MLIP_<tensor>_std",
    )

    p = sub.add_parser(
        "select",
        help="the structures a committee disagrees on most, to label next (query by committee)",
        description="Score every structure of POOL by a committee's spread (largest per-atom force "
        "spread, eV/Å, or energy spread per atom) and write the highest-scoring ones within "
        "[--lower, --upper) to OUT for labelling. Spreads come from --models, or from the MLIP_*_std "
        "keys that mlip predict/md --committee wrote into POOL.",
    )
    p.add_argument("pool", help="candidate structures (extxyz or any ASE format)")
    p.add_argument("-o", "--output", required=True, help="output extxyz file (the chosen structures)")
    p.add_argument("-n", "--count", type=int, default=None, help="at most this many (default: all)")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        default=(),
        help="two or more models (e.g. seeds of one config); default: read the spread from POOL",
    )
    p.add_argument("--by", default="forces", choices=["forces", "energy"], help="score (default forces)")
    p.add_argument("--lower", type=float, default=0.0, help="smallest score kept (trust level low)")
    p.add_argument("--upper", type=float, default=float("inf"), help="scores from here up are left out")
    p.add_argument(
        "--min-separation",
        type=int,
        default=0,
        metavar="K",
        help="chosen structures at least K positions apart in POOL (neighbouring MD frames)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser(
        "md",
        help="molecular dynamics recording energy, forces and every tensor target (extxyz frames)",
        description="Molecular dynamics with an mlip model. Every --record-every steps an extxyz frame "
        "(positions, momenta, MLIP_energy, MLIP_forces, MLIP_<tensor>) is appended to the output and "
        "flushed; --restart continues a run from its last frame.",
    )
    p.add_argument("model", help="model.pt written by mlip train")
    p.add_argument("structure", nargs="?", default=None, help="start structure (not needed with --restart)")
    p.add_argument("-o", "--output", default=None, help="output extxyz file (default: the --restart file)")
    p.add_argument("--steps", type=int, default=1000, help="total number of MD steps (default 1000)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    p.add_argument("--temperature", type=float, default=300.0, help="K: thermostat target (default 300)")
    p.add_argument(
        "--initial-temperature",
        type=float,
        default=None,
        help="K: initial velocities drawn at this temperature (default: --temperature, 2× in nve)",
    )
    p.add_argument("--ensemble", default="nvt", choices=["nve", "nvt", "csvr"], help="nvt = Langevin")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--taut", type=float, default=100.0, help="csvr (Bussi) time constant, fs (default 100)")
    p.add_argument("--index", type=int, default=0, help="frame of STRUCTURE to start from (default 0)")
    p.add_argument("--supercell", default=None, metavar="A,B,C", help="repeat a periodic cell, e.g. 2,2,2")
    p.add_argument("--seed", type=int, default=0, help="initial velocities and thermostat noise")
    p.add_argument("--record-every", type=int, default=10, help="write a frame every N steps (default 10)")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, Å (default 1.0; 0 = off)")
    p.add_argument("--restart", default=None, metavar="OUT.xyz", help="continue from this file's last frame")
    p.add_argument(
        "--electric-field",
        default=None,
        metavar="EX,EY,EZ",
        help="uniform field, V/Å (dipole in e·Å), coupled through the model's dipole: forces + Zᵀ·E",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--no-progress", action="store_true", help="a line per frame instead of a progress bar")
    p.add_argument(
        "--committee",
        nargs="+",
        metavar="MODEL",
        default=(),
        help="more models (e.g. other seeds): follow their mean forces and record their spread "
        "(MLIP_energy_std, MLIP_forces_std per atom) in every frame",
    )
    p.add_argument(
        "--stop-forces-std",
        type=float,
        default=None,
        metavar="EV_PER_A",
        help="with --committee: stop at the first step where an atom's force spread exceeds this (eV/Å) "
        "and write that step as the last frame",
    )

    p = sub.add_parser(
        "ipi",
        help="i-PI force client: energy, forces, virial and the model's tensors for an i-PI server",
        description="Connect to a running i-PI server (i-pi input.xml) as its force client. For every "
        "bead i-PI sends, return the energy, forces, virial (-V·stress for cells periodic along all "
        "three axes, zeros otherwise) and the model's tensor outputs (dipole, polarizability, ...) as "
        "i-PI's JSON extras, in the model's units. Runs until i-PI ends the simulation.",
    )
    p.add_argument("model", help="model.pt written by mlip train")
    p.add_argument(
        "--template",
        required=True,
        metavar="STRUCTURE",
        help="structure giving species, atom order and periodicity (first frame; e.g. i-PI's init file)",
    )
    p.add_argument("--unix", metavar="NAME", default=None, help="unix socket /tmp/ipi_NAME (i-PI's address)")
    p.add_argument("--address", metavar="HOST", default=None, help="inet socket: i-PI's host name or IP")
    p.add_argument("--port", type=int, default=31415, help="inet socket port (default 31415)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after N force evaluations, one per bead per step (default: until i-PI ends)",
    )
    p.add_argument("--wait", type=float, default=60.0, help="s to wait for the server to appear (default 60)")
    p.add_argument("--skin", type=float, default=1.0, help="neighbour-list skin, Å (default 1.0; 0 = off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])

    p = sub.add_parser(
        "vibrations",
        help="harmonic frequencies, IR intensities and Raman activities of a structure (CSV, PNG)",
        description="Harmonic modes from the model's Hessian (finite differences of its forces, float64), "
        "IR intensities (km/mol) from its Born charges if it has a dipole, Raman activities (Å⁴/amu) from "
        "its polarizability derivatives if it has a polarizability. Rigid-body modes are flagged "
        "(rigid_body = 1 in the CSV) and left out of the table and the plot.",
    )
    p.add_argument("model", help="model.pt written by mlip train")
    p.add_argument("structure", help="structure file")
    p.add_argument("-o", "--output", required=True, help="output CSV, one row per mode")
    p.add_argument("--index", type=int, default=0, help="frame of STRUCTURE (default 0)")
    p.add_argument("--relax", action="store_true", help="relax with ASE BFGS first")
    p.add_argument("--fmax", type=float, default=0.01, help="relaxation force threshold, eV/Å (default 0.01)")
    p.add_argument("--relax-steps", type=int, default=1000, help="most BFGS steps (default 1000)")
    p.add_argument("--delta", type=float, default=0.005, help="finite-difference step, Å (default 0.005)")
    p.add_argument("--plot", metavar="PNG", default=None, help="also draw broadened IR/Raman stick spectra")
    p.add_argument("--width", type=float, default=10.0, help="Lorentzian FWHM of the plot, cm⁻¹ (default 10)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser(
        "spectrum",
        help="IR or Raman spectrum of mlip md trajectories (dipole / polarizability autocorrelation)",
        description="IR (from MLIP_dipole) or Raman (from MLIP_polarizability) spectrum of one or more "
        "trajectories written by mlip md, averaged; the time step comes from the frames' time_fs.",
    )
    p.add_argument("trajectories", nargs="+", help="extxyz trajectories (same time step)")
    p.add_argument("-o", "--output", required=True, help="output CSV")
    p.add_argument("--kind", default="ir", choices=["ir", "raman"])
    p.add_argument("--key", default=None, help="label key (default MLIP_dipole / MLIP_polarizability)")
    p.add_argument(
        "--timestep", "--timestep-fs", type=float, default=None, help="fs between frames (default: time_fs)"
    )
    p.add_argument("--max-lag", type=float, default=None, help="longest correlation time, fs (default T/2)")
    p.add_argument("--window", default="hann", choices=["hann", "none"])
    p.add_argument("--zero-pad", type=int, default=4, help="transform length / kept lags (default 4)")
    p.add_argument(
        "--quantum-correction",
        default="none",
        choices=["none", "harmonic"],
        help="raman only: harmonic = quantum Stokes line shape (IR already is the corrected absorption)",
    )
    p.add_argument("--temperature", type=float, default=None, help="K, for --quantum-correction harmonic")
    p.add_argument("--max-wavenumber", type=float, default=5000.0, help="cm⁻¹ written (default 5000)")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="FWHM",
        help="Gaussian smoothing, FWHM in cm⁻¹ (default 0: none)",
    )
    p.add_argument("--plot", metavar="PNG", default=None, help="also write a plot")

    p = sub.add_parser(
        "export",
        help="write the model as a self-contained program for MD engines (.pt2)",
        description="Export an energy model as a torch.export program (loadable with torch.export.load, "
        "no mlip needed) or, with --aoti, an AOTInductor package (for C++: LAMMPS and other engines). "
        "Inputs: atomic numbers, edge index, edge vectors, number of local atoms; outputs: local atomic "
        "energies (eV) and dE/d(edge vector) (eV/Å); see mlip.model.export.",
    )
    p.add_argument("model", help="model.pt written by mlip train")
    p.add_argument("-o", "--output", required=True, help="output file, .pt2")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument(
        "--aoti", action="store_true", help="compile with AOTInductor (slow: minutes of CPU; for C++ engines)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="--aoti: OpenMP threads compiled into the kernels (default 1: serial, one MPI rank per core)",
    )

    p = sub.add_parser("plot", help="learning curve of a training run (from RUN_DIR/metrics.csv)")
    p.add_argument("run_dir", help="output_dir of mlip train")
    p.add_argument("-o", "--output", default=None, help="PNG file (default RUN_DIR/learning_curve.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from mlip.cli.train import run_train

            run_train(args.config, args.override)
        elif args.command == "preprocess":
            from mlip.cli.preprocess import run_preprocess

            run_preprocess(
                args.config,
                args.override,
                shard_structures=args.shard_size,
                shard_megabytes=args.shard_megabytes,
                compression=args.compression,
                quiet=args.quiet,
            )
        elif args.command == "eval":
            from mlip.cli.evaluate import run_eval

            run_eval(args.model, args.data, args.key, args.batch_size, args.device, args.dtype, args.plot)
        elif args.command == "predict":
            from mlip.cli.predict import run_predict

            run_predict(
                args.model,
                args.data,
                args.output,
                args.batch_size,
                args.device,
                args.dtype,
                progress=not args.no_progress,
                committee=args.committee,
                derivatives=[
                    name
                    for name, wanted in (
                        ("born_charges", args.born_charges),
                        ("polarizability_derivatives", args.polarizability_derivatives),
                    )
                    if wanted
                ],
            )
        elif args.command == "select":
            from mlip.cli.select import run_select

            run_select(
                args.pool,
                args.output,
                args.count,
                models=args.models,
                by=args.by,
                lower=args.lower,
                upper=args.upper,
                min_separation=args.min_separation,
                batch_size=args.batch_size,
                device=args.device,
                dtype=args.dtype,
                progress=not args.no_progress,
            )
        elif args.command == "md":
            from mlip.cli.md import run_md

            run_md(
                args.model,
                args.structure,
                args.output,
                steps=args.steps,
                timestep=args.timestep,
                temperature=args.temperature,
                initial_temp=args.initial_temperature,
                ensemble=args.ensemble,
                friction=args.friction,
                taut=args.taut,
                index=args.index,
                supercell=args.supercell,
                seed=args.seed,
                record_every=args.record_every,
                dtype=args.dtype,
                device=args.device,
                restart=args.restart,
                skin=args.skin,
                progress=not args.no_progress,
                electric_field=args.electric_field,
                committee=args.committee,
                stop_forces_std=args.stop_forces_std,
            )
        elif args.command == "ipi":
            from mlip.cli.ipi import run_ipi

            run_ipi(
                args.model,
                args.template,
                unix=args.unix,
                address=args.address,
                port=args.port,
                device=args.device,
                dtype=args.dtype,
                max_steps=args.max_steps,
                wait=args.wait,
                skin=args.skin,
            )
        elif args.command == "vibrations":
            from mlip.cli.vibrations import run_vibrations

            run_vibrations(
                args.model,
                args.structure,
                args.output,
                index=args.index,
                relax=args.relax,
                fmax=args.fmax,
                relax_steps=args.relax_steps,
                delta=args.delta,
                plot=args.plot,
                width=args.width,
                device=args.device,
            )
        elif args.command == "spectrum":
            from mlip.cli.spectrum import run_spectrum

            run_spectrum(
                args.trajectories,
                args.output,
                kind=args.kind,
                timestep=args.timestep,
                key=args.key,
                plot=args.plot,
                max_lag=args.max_lag,
                window=args.window,
                zero_pad=args.zero_pad,
                quantum_correction=args.quantum_correction,
                temperature=args.temperature,
                max_wavenumber=args.max_wavenumber,
                smooth=args.smooth,
            )
        elif args.command == "export":
            from mlip.cli.export import run_export

            run_export(args.model, args.output, dtype=args.dtype, aoti=args.aoti, threads=args.threads)
        elif args.command == "plot":
            from mlip.cli.plot import run_plot

            run_plot(args.run_dir, args.output)
    except MLIPError as err:
        print(f"mlip: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlip: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
