"""Platform-independent error codes and the OS error tables that map onto them.

Five Linux errno values and five WSA codes map onto `ErrorCode` (docs/PROVIDER.md, "Error
codes"); every other OS code passes through unchanged, so a caller can still tell, say, EPIPE from
ECONNRESET.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ErrorCode(IntEnum):
    """Platform-independent error codes; a completion's `error_code` is one of these where the OS
    error maps onto it (docs/PROVIDER.md, "Error codes")."""

    CONNECTION_REFUSED = 1001
    CONNECTION_RESET = 1002
    CONNECTION_TIMEOUT = 1003
    BUFFER_TOO_SMALL = 2001
    SOCKET_NOT_REGISTERED = 3001


# Windows Sockets error numbers (winerror.h); fixed values, so they are spelled out and usable on
# every platform (the IOCP/RIO backends and their tests on Linux need them).
WSAEINVAL = 10022
WSAENOBUFS = 10055
WSAETIMEDOUT = 10060
WSAECONNREFUSED = 10061
WSAECONNRESET = 10054
WSAECONNABORTED = 10053
WSAESHUTDOWN = 10058
WSAEWOULDBLOCK = 10035
WSA_IO_PENDING = 997
WSA_OPERATION_ABORTED = 995
ERROR_NETNAME_DELETED = 64
ERROR_CONNECTION_REFUSED = 1225
ERROR_SEM_TIMEOUT = 121

LINUX_ERRNO_TO_ERROR_CODE: dict[int, ErrorCode] = {
    errno.ECONNREFUSED: ErrorCode.CONNECTION_REFUSED,
    errno.ECONNRESET: ErrorCode.CONNECTION_RESET,
    errno.ETIMEDOUT: ErrorCode.CONNECTION_TIMEOUT,
    errno.ENOBUFS: ErrorCode.BUFFER_TOO_SMALL,
    errno.EBADF: ErrorCode.SOCKET_NOT_REGISTERED,
}

WSA_TO_ERROR_CODE: dict[int, ErrorCode] = {
    WSAECONNREFUSED: ErrorCode.CONNECTION_REFUSED,
    WSAECONNRESET: ErrorCode.CONNECTION_RESET,
    WSAETIMEDOUT: ErrorCode.CONNECTION_TIMEOUT,
    WSAENOBUFS: ErrorCode.BUFFER_TOO_SMALL,
    WSAEINVAL: ErrorCode.SOCKET_NOT_REGISTERED,
}


def map_errno(code: int) -> int:
    """Linux/BSD errno (positive) -> `ErrorCode` where the table maps it, else the errno itself."""
    return LINUX_ERRNO_TO_ERROR_CODE.get(code, code)


def map_wsa_error(code: int) -> int:
    """Windows WSA/Win32 error -> `ErrorCode` where the table maps it, else the code itself."""
    return WSA_TO_ERROR_CODE.get(code, code)


def describe(code: int) -> str:
    """A readable name for a completion's error_code (ErrorCode member or OS error)."""
    try:
        return ErrorCode(code).name
    except ValueError:
        name = errno.errorcode.get(code)
        return name if name else f"error {code}"


class ProviderError(Exception):
    """The provider itself failed (not one operation): the <0 case of process_completions."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class BackendUnavailable(ProviderError):
    """A backend cannot run here; `reason` says why (wrong OS, kernel, seccomp, missing library)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason
