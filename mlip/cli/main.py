"""``mlip`` command: dispatches to train / preprocess / eval / predict / plot; user errors become one line."""

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
            )
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
