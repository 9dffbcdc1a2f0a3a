"""Training, export and evaluation of genserve's generators (needs the `train` extra: torch)."""
