"""Command-line interface: ``mlip train | eval | predict``."""
