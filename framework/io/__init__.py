"""The unified async I/O provider layer."""

from framework.io.errors import BackendUnavailable, ErrorCode, ProviderError
from framework.io.factory import available_backends, create_provider, fallback_chain, register_backend
from framework.io.provider import (
    AsyncIOProvider,
    CompletionCallback,
    CompletionResult,
    OpType,
    ProviderStatistics,
    RecvOperation,
    SendOperation,
    Status,
)

__all__ = [
    "AsyncIOProvider",
    "BackendUnavailable",
    "CompletionCallback",
    "CompletionResult",
    "ErrorCode",
    "OpType",
    "ProviderError",
    "ProviderStatistics",
    "RecvOperation",
    "SendOperation",
    "Status",
    "available_backends",
    "create_provider",
    "fallback_chain",
    "register_backend",
]
