"""Skip marks shared by several test modules."""

from __future__ import annotations

import sys

import pytest

# Tests that stop a server process with SIGTERM (graceful drain) or freeze a peer with SIGSTOP:
# on Windows `send_signal(SIGTERM)` is TerminateProcess and SIGSTOP/SIGKILL do not exist.
needs_posix_signals = pytest.mark.skipif(
    sys.platform == "win32",
    reason="needs POSIX signals (SIGTERM drain, SIGSTOP/SIGKILL); Windows terminates processes outright",
)
