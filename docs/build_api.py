"""Build the HTML API reference of `framework` with pdoc: `make docs` (or `python docs/build_api.py [OUT]`).

Writes OUT (default build/docs, not committed) and exits 1 if pdoc warned about anything (a module
that cannot import, an unparsable annotation or docstring, ...), printing each warning, so a
reference that silently lost a page fails the build. Modules written for another OS (the kqueue,
IOCP and RIO backends) import everywhere and are documented from any machine.

Every public module is documented, also those a package's `__all__` hides from pdoc's own walk;
private ones (`_name`) are left out.
"""

from __future__ import annotations

import argparse
import pkgutil
import re
import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.extract
import pdoc.render

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "docs"


def public_modules(package: str = "framework") -> list[str]:
    """The package and every submodule with no `_private` part in its name (`__main__` counts as public)."""
    root = __import__(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if not any(part.startswith("_") and part != "__main__" for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def specs_for(modules: list[str]) -> list[str]:
    """pdoc specs that yield exactly `modules`: pdoc walks a spec's submodules itself (private ones
    included) and warns when two specs add the same module, so give it the fewest specs and then
    `!name` exclusions for what its walk added beyond `modules`."""
    covered: set[str] = set()
    specs: list[str] = []
    for name in modules:  # sorted: a package comes before its submodules
        if name not in covered:
            specs.append(name)
            covered.update(pdoc.extract.walk_specs([name]))
    return specs + [f"!{re.escape(name)}$" for name in sorted(covered - set(modules))]


def build(out: Path = DEFAULT_OUT, package: str = "framework") -> list[str]:
    """Render the reference of `package` into `out`; returns pdoc's warnings (empty: a clean build)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    pdoc.render.configure(docformat="markdown", footer_text="raon-framework")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*specs_for(public_modules(package)), output_directory=out)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main(argv: list[str] | None = None) -> int:
    """Command line: `python docs/build_api.py [OUT] [--package NAME]`; exit status 1 when pdoc warned."""
    parser = argparse.ArgumentParser(description="Build the HTML API reference with pdoc.")
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--package", default="framework", help="package to document")
    args = parser.parse_args(argv)
    out: Path = args.out
    problems = build(out, args.package)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if problems:
        print(
            f"API reference: {len(problems)} warning(s); fix them (build/docs is incomplete)", file=sys.stderr
        )
        return 1
    print(f"API reference written to {out}/index.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
