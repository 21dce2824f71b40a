"""Build hook: the io_uring cffi extension is optional (see framework/io/backends/_uring_build.py).

`pip install -e .` (or a wheel build) tries to compile `framework.io.backends._uring` against
liburing. Without liburing-dev, a C compiler or cffi, the install still succeeds: the extension is
skipped with a warning and the io_uring backend reports itself unavailable (epoll takes over).
"""

import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
BUILDER = os.path.join(HERE, "framework", "io", "backends", "_uring_build.py")


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: io_uring extension not built ({message}); io_uring will be unavailable\n")


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: a missing liburing only disables io_uring."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # setup errors (no compiler at all) as well as compile errors
            _warn(str(exc))

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"{ext.name}: {exc}")


def _ext_modules() -> list:
    if not sys.platform.startswith("linux"):
        return []
    try:
        # Load the builder by path: importing the `framework` package needs runtime deps that the
        # isolated build environment does not have.
        spec = importlib.util.spec_from_file_location("_uring_build", BUILDER)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ext = module.ffibuilder.distutils_extension(tmpdir=os.path.join("build", "cffi"), verbose=False)
    except Exception as exc:
        _warn(str(exc))
        return []
    ext.optional = True
    return [ext]


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
