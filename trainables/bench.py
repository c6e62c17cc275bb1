"""``python -m trainables.bench`` moved to ``python -m bench`` (the measurement tools left the library they
measure). This alias says so on stderr and forwards every argument."""

from __future__ import annotations

import sys

__all__: list[str] = []  # a forwarding command, nothing to import

if __name__ == "__main__":
    print("note: python -m trainables.bench moved to python -m bench; forwarding", file=sys.stderr)
    from bench.cli import main

    raise SystemExit(main(prog="python -m bench"))
