"""Checks an installed environment: onnxruntime-gpu present, plain onnxruntime absent (they share a module).

With --serving, also checks that torch is not installed (the serving path is torch-free).
"""

from __future__ import annotations

import sys
from importlib import metadata


def installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def main() -> int:
    problems = []
    if not installed("onnxruntime-gpu"):
        problems.append("onnxruntime-gpu is not installed")
    for other in ("onnxruntime", "onnxruntime-cpu", "ort-nightly"):
        if installed(other):
            problems.append(f"{other} is installed beside onnxruntime-gpu; they share the `onnxruntime` module: uninstall it")
    if "--serving" in sys.argv and installed("torch"):
        problems.append("torch is installed in the serving environment; the serving path must not need it")
    for p in problems:
        print(f"check_env: {p}", file=sys.stderr)
    if not problems:
        import onnxruntime

        print(f"check_env: ok (onnxruntime-gpu {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
