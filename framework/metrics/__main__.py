"""`python -m framework.metrics --markdown`: print docs/METRICS.md (generated from the registry)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m framework.metrics --markdown`: print docs/METRICS.md (generated from the metrics)."""
    parser = argparse.ArgumentParser(prog="python -m framework.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", required=True, help="print docs/METRICS.md")
    parser.parse_args(argv)
    from framework.metrics.docs import markdown

    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
