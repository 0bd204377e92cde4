"""ASE calculators."""
