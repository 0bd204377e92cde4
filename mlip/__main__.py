"""``python -m mlip`` = the ``mlip`` command (also under ``torchrun``)."""

from mlip.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
