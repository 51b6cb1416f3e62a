"""Fail when a library file exceeds the size limit (500 lines): long modules hide more than one idea."""

import sys
from pathlib import Path

LIMIT = 500
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    too_long = [
        (p, n)
        for p in sorted((ROOT / "alignlab").rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > LIMIT
    ]
    for p, n in too_long:
        print(f"{p.relative_to(ROOT)}: {n} lines (limit {LIMIT})")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
