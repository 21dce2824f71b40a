"""cffi (API mode) builder of `framework.io.backends._uring`, the io_uring backend's C side.

The C lives in `_uring/`: `fw_uring.h` (the API; its cffi-begin/-end part is also the cdef),
`fw_ring_public.h` (the fields of fw_ring Python reads) and `fw_uring.c`. Built by setup.py when
the package installs (optional: without liburing the install still succeeds and the io_uring
backend reports itself unavailable). Build in place by hand with:

    python framework/io/backends/_uring_build.py [--sanitize]

`--sanitize` builds with AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

MODULE = "framework.io.backends._uring"
C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_uring")
WARNINGS = ["-Wall", "-Wextra"]  # warning-free: tests/test_io_uring.py compiles with -Werror
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
# Values Python reads that come from C expressions or liburing's headers (cffi asks the compiler).
CONSTANTS = """FW_UD_TIMEOUT_TAG FW_UD_ACCEPT_TAG FW_UD_CANCEL FW_UD_WAKE FW_UD_STREAM_TAG
    FW_HAVE_RECV_MULTISHOT FW_HAVE_MULTISHOT_ACCEPT FW_BGID IORING_CQE_F_BUFFER IORING_CQE_BUFFER_SHIFT
    IORING_FEAT_NODROP IORING_FEAT_EXT_ARG IORING_CQE_F_MORE IORING_OP_LINK_TIMEOUT
    IORING_OP_ASYNC_CANCEL IORING_OP_ACCEPT IORING_OP_CONNECT IORING_OP_SEND IORING_OP_RECV
    IORING_OP_READ_FIXED IORING_OP_WRITE_FIXED IORING_OP_READ"""


def _read(name: str) -> str:
    with open(os.path.join(C_DIR, name), encoding="utf-8") as f:
        return f.read()


def cdef() -> str:
    """fw_uring.h's cffi part, fw_ring with its public fields, and the constants."""
    header = _read("fw_uring.h")
    api = header.split("/* cffi-begin")[1].split("*/", 1)[1].split("/* cffi-end */")[0]
    ring = "struct fw_ring {\n" + _read("fw_ring_public.h") + "    ...;\n};\n"
    return api + ring + "".join(f"#define {name} ...\n" for name in CONSTANTS.split())


def make_builder(sanitize: bool = False) -> FFI:
    ffi = FFI()
    ffi.cdef(cdef())
    ffi.set_source(
        MODULE,
        '#include "fw_uring.c"',  # one translation unit: the C's static helpers stay internal
        libraries=["uring"],
        include_dirs=[C_DIR],
        extra_compile_args=["-O1" if sanitize else "-O2", *WARNINGS, *(SANITIZE if sanitize else [])],
        extra_link_args=SANITIZE if sanitize else [],
        depends=[os.path.join(C_DIR, n) for n in ("fw_uring.h", "fw_ring_public.h", "fw_uring.c")],
    )
    return ffi


ffibuilder = make_builder()  # setup.py's cffi_modules entry


def build_inplace(sanitize: bool = False) -> str:
    """Compile the extension and copy it next to this file (a source checkout, no reinstall)."""
    import shutil
    import tempfile

    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        built = make_builder(sanitize).compile(tmpdir=tmp, verbose=False)
        target = os.path.join(here, os.path.basename(built))
        # Copy beside the target, then rename: a process that has the old extension mapped keeps
        # its (unlinked) inode; overwriting the mapped file in place could crash it.
        staging = target + ".new"
        shutil.copy2(built, staging)
        os.replace(staging, target)
    return target


if __name__ == "__main__":
    out = build_inplace(sanitize="--sanitize" in sys.argv[1:])
    sys.stdout.write(f"built {out}\n")
