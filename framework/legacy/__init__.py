"""The RAON legacy IOCP API in Python, running on any AsyncIOProvider (epoll, io_uring, ...).

Names map one-to-one to the C++ ones (IocpCore::HandleIocp -> IocpCore.handle_iocp, ...); the full
table is in docs/MIGRATING.md. `IocpLegacyProvider` (backend `legacy_iocp`) adapts an `IocpCore` to the
provider interface so Session code runs inside a legacy process.
"""

from framework.legacy.core import CallableJob, IocpCore, IocpObject, IoType, OverlappedEx
from framework.legacy.packet import PacketError, PacketHeader, build_packet, packet_id_of, read_packets
from framework.legacy.provider import IocpLegacyProvider
from framework.legacy.service import IocpObjectListener, ServiceCoordinator, ServiceType, SessionPool
from framework.legacy.session import IocpObjectSession, KickReason, SessionType

__all__ = [
    "CallableJob",
    "IoType",
    "IocpCore",
    "IocpLegacyProvider",
    "IocpObject",
    "IocpObjectListener",
    "IocpObjectSession",
    "KickReason",
    "OverlappedEx",
    "PacketError",
    "PacketHeader",
    "ServiceCoordinator",
    "ServiceType",
    "SessionPool",
    "SessionType",
    "build_packet",
    "packet_id_of",
    "read_packets",
]
