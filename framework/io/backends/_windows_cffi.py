"""cffi ABI-mode declarations of the kernel32 / ws2_32 / mswsock pieces the IOCP and RIO backends use.

Facts that shaped this module:
- ABI mode (`ffi.cdef` + `ffi.dlopen`) needs no compiler, so Windows users install with pip alone.
  Parsing the declarations is pure Python and works on every OS (the tests check the layouts on
  Linux); only `load()` opens the DLLs, and only on Windows.
- Windows is LLP64: `DWORD`/`ULONG`/`LONG` are 32-bit even on x64, while Linux/macOS `long` is 64-bit.
  The typedefs below therefore use fixed-width types, so `ffi.sizeof` gives the Windows layout on
  any 64-bit host (OVERLAPPED 32, OVERLAPPED_ENTRY 32, WSABUF 16, GUID 16, RIO_BUF 16, RIORESULT 24,
  sockaddr_in 16, sockaddr_in6 28 on x64).
- `WINAPI` (__stdcall) matters only on 32-bit Windows; cffi accepts and ignores it elsewhere.
- AcceptEx, ConnectEx and GetAcceptExSockaddrs are not exported by ws2_32: their pointers come from
  `WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER, <GUID>)` on a socket of the right provider. The
  Registered I/O functions come as a whole table from
  `WSAIoctl(SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER, WSAID_MULTIPLE_RIO)` (Windows 8+).
- cffi saves GetLastError after every call; `ffi.getwinerror()` reads it (Windows only).
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

import cffi

CDEF = """
typedef int BOOL;
typedef int INT;
typedef uint8_t BYTE;
typedef uint8_t UCHAR;
typedef uint16_t USHORT;
typedef uint16_t ADDRESS_FAMILY;
typedef uint32_t DWORD;
typedef uint32_t ULONG;
typedef int32_t LONG;
typedef uint64_t ULONGLONG;
typedef void *PVOID;
typedef void *LPVOID;
typedef void *HANDLE;
typedef char *PCHAR;
typedef uintptr_t ULONG_PTR;
typedef uintptr_t UINT_PTR;
typedef UINT_PTR SOCKET;
typedef DWORD *LPDWORD;
typedef ULONG *PULONG;
typedef INT *LPINT;
typedef unsigned int GROUP;

typedef struct _GUID {
    uint32_t Data1;
    uint16_t Data2;
    uint16_t Data3;
    uint8_t Data4[8];
} GUID;

typedef struct _OVERLAPPED {
    ULONG_PTR Internal;          /* NTSTATUS of the finished operation */
    ULONG_PTR InternalHigh;      /* bytes transferred */
    union {
        struct {
            DWORD Offset;
            DWORD OffsetHigh;
        };
        PVOID Pointer;
    };
    HANDLE hEvent;
} OVERLAPPED, *LPOVERLAPPED;
typedef OVERLAPPED WSAOVERLAPPED;
typedef OVERLAPPED *LPWSAOVERLAPPED;

typedef struct _OVERLAPPED_ENTRY {
    ULONG_PTR lpCompletionKey;
    LPOVERLAPPED lpOverlapped;
    ULONG_PTR Internal;
    DWORD dwNumberOfBytesTransferred;
} OVERLAPPED_ENTRY, *LPOVERLAPPED_ENTRY;

/* Not a Windows type: our OVERLAPPED carries the operation id right behind it (the classic
   "OVERLAPPED_EX" idiom), so a completion entry leads straight to the pending-operation table. */
typedef struct _FW_OVERLAPPED {
    OVERLAPPED ov;
    uint64_t op_id;
} FW_OVERLAPPED;

typedef struct _WSABUF {
    ULONG len;
    char *buf;
} WSABUF, *LPWSABUF;

struct sockaddr {
    ADDRESS_FAMILY sa_family;
    char sa_data[14];
};

typedef struct in_addr {
    union {
        struct { UCHAR s_b1, s_b2, s_b3, s_b4; } S_un_b;
        struct { USHORT s_w1, s_w2; } S_un_w;
        ULONG S_addr;
    } S_un;
} IN_ADDR;

struct sockaddr_in {
    ADDRESS_FAMILY sin_family;
    USHORT sin_port;
    IN_ADDR sin_addr;
    char sin_zero[8];
};

typedef struct in6_addr {
    union {
        UCHAR Byte[16];
        USHORT Word[8];
    } u;
} IN6_ADDR;

struct sockaddr_in6 {
    ADDRESS_FAMILY sin6_family;
    USHORT sin6_port;
    ULONG sin6_flowinfo;
    IN6_ADDR sin6_addr;
    ULONG sin6_scope_id;
};

/* mswsock.h: extension functions reached through WSAIoctl */
typedef BOOL (WINAPI *LPFN_ACCEPTEX)(SOCKET sListenSocket, SOCKET sAcceptSocket, PVOID lpOutputBuffer,
    DWORD dwReceiveDataLength, DWORD dwLocalAddressLength, DWORD dwRemoteAddressLength,
    LPDWORD lpdwBytesReceived, LPOVERLAPPED lpOverlapped);
typedef BOOL (WINAPI *LPFN_CONNECTEX)(SOCKET s, const struct sockaddr *name, int namelen,
    PVOID lpSendBuffer, DWORD dwSendDataLength, LPDWORD lpdwBytesSent, LPOVERLAPPED lpOverlapped);
typedef void (WINAPI *LPFN_GETACCEPTEXSOCKADDRS)(PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
    DWORD dwLocalAddressLength, DWORD dwRemoteAddressLength, struct sockaddr **LocalSockaddr,
    LPINT LocalSockaddrLength, struct sockaddr **RemoteSockaddr, LPINT RemoteSockaddrLength);

/* mswsockdef.h / mswsock.h: Registered I/O */
typedef struct RIO_BUFFERID_t *RIO_BUFFERID;
typedef struct RIO_CQ_t *RIO_CQ;
typedef struct RIO_RQ_t *RIO_RQ;

typedef struct _RIO_BUF {
    RIO_BUFFERID BufferId;
    ULONG Offset;
    ULONG Length;
} RIO_BUF, *PRIO_BUF;

typedef struct _RIORESULT {
    LONG Status;
    ULONG BytesTransferred;
    ULONGLONG SocketContext;
    ULONGLONG RequestContext;
} RIORESULT, *PRIORESULT;

typedef enum _RIO_NOTIFICATION_COMPLETION_TYPE {
    RIO_EVENT_COMPLETION = 1,
    RIO_IOCP_COMPLETION = 2
} RIO_NOTIFICATION_COMPLETION_TYPE;

typedef struct _RIO_NOTIFICATION_COMPLETION {
    RIO_NOTIFICATION_COMPLETION_TYPE Type;
    union {
        struct {
            HANDLE EventHandle;
            BOOL NotifyReset;
        } Event;
        struct {
            HANDLE IocpHandle;
            PVOID CompletionKey;
            PVOID Overlapped;
        } Iocp;
    };
} RIO_NOTIFICATION_COMPLETION, *PRIO_NOTIFICATION_COMPLETION;

typedef BOOL (WINAPI *LPFN_RIORECEIVE)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
    DWORD Flags, PVOID RequestContext);
typedef int (WINAPI *LPFN_RIORECEIVEEX)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
    PRIO_BUF pLocalAddress, PRIO_BUF pRemoteAddress, PRIO_BUF pControlContext, PRIO_BUF pFlags,
    DWORD Flags, PVOID RequestContext);
typedef BOOL (WINAPI *LPFN_RIOSEND)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
    DWORD Flags, PVOID RequestContext);
typedef BOOL (WINAPI *LPFN_RIOSENDEX)(RIO_RQ SocketQueue, PRIO_BUF pData, ULONG DataBufferCount,
    PRIO_BUF pLocalAddress, PRIO_BUF pRemoteAddress, PRIO_BUF pControlContext, PRIO_BUF pFlags,
    DWORD Flags, PVOID RequestContext);
typedef void (WINAPI *LPFN_RIOCLOSECOMPLETIONQUEUE)(RIO_CQ CQ);
typedef RIO_CQ (WINAPI *LPFN_RIOCREATECOMPLETIONQUEUE)(DWORD QueueSize,
    PRIO_NOTIFICATION_COMPLETION NotificationCompletion);
typedef RIO_RQ (WINAPI *LPFN_RIOCREATEREQUESTQUEUE)(SOCKET Socket, ULONG MaxOutstandingReceive,
    ULONG MaxReceiveDataBuffers, ULONG MaxOutstandingSend, ULONG MaxSendDataBuffers,
    RIO_CQ ReceiveCQ, RIO_CQ SendCQ, PVOID SocketContext);
typedef ULONG (WINAPI *LPFN_RIODEQUEUECOMPLETION)(RIO_CQ CQ, PRIORESULT Array, ULONG ArraySize);
typedef void (WINAPI *LPFN_RIODEREGISTERBUFFER)(RIO_BUFFERID BufferId);
typedef INT (WINAPI *LPFN_RIONOTIFY)(RIO_CQ CQ);
typedef RIO_BUFFERID (WINAPI *LPFN_RIOREGISTERBUFFER)(PCHAR DataBuffer, DWORD DataLength);
typedef BOOL (WINAPI *LPFN_RIORESIZECOMPLETIONQUEUE)(RIO_CQ CQ, DWORD QueueSize);
typedef BOOL (WINAPI *LPFN_RIORESIZEREQUESTQUEUE)(RIO_RQ RQ, DWORD MaxOutstandingReceive,
    DWORD MaxOutstandingSend);

typedef struct _RIO_EXTENSION_FUNCTION_TABLE {
    DWORD cbSize;
    LPFN_RIORECEIVE RIOReceive;
    LPFN_RIORECEIVEEX RIOReceiveEx;
    LPFN_RIOSEND RIOSend;
    LPFN_RIOSENDEX RIOSendEx;
    LPFN_RIOCLOSECOMPLETIONQUEUE RIOCloseCompletionQueue;
    LPFN_RIOCREATECOMPLETIONQUEUE RIOCreateCompletionQueue;
    LPFN_RIOCREATEREQUESTQUEUE RIOCreateRequestQueue;
    LPFN_RIODEQUEUECOMPLETION RIODequeueCompletion;
    LPFN_RIODEREGISTERBUFFER RIODeregisterBuffer;
    LPFN_RIONOTIFY RIONotify;
    LPFN_RIOREGISTERBUFFER RIORegisterBuffer;
    LPFN_RIORESIZECOMPLETIONQUEUE RIOResizeCompletionQueue;
    LPFN_RIORESIZEREQUESTQUEUE RIOResizeRequestQueue;
} RIO_EXTENSION_FUNCTION_TABLE, *PRIO_EXTENSION_FUNCTION_TABLE;

/* kernel32 */
HANDLE WINAPI CreateIoCompletionPort(HANDLE FileHandle, HANDLE ExistingCompletionPort,
    ULONG_PTR CompletionKey, DWORD NumberOfConcurrentThreads);
BOOL WINAPI GetQueuedCompletionStatusEx(HANDLE CompletionPort, OVERLAPPED_ENTRY *lpCompletionPortEntries,
    ULONG ulCount, PULONG ulNumEntriesRemoved, DWORD dwMilliseconds, BOOL fAlertable);
BOOL WINAPI PostQueuedCompletionStatus(HANDLE CompletionPort, DWORD dwNumberOfBytesTransferred,
    ULONG_PTR dwCompletionKey, LPOVERLAPPED lpOverlapped);
BOOL WINAPI CancelIoEx(HANDLE hFile, LPOVERLAPPED lpOverlapped);
BOOL WINAPI CloseHandle(HANDLE hObject);
BOOL WINAPI SetFileCompletionNotificationModes(HANDLE FileHandle, UCHAR Flags);

/* ws2_32 */
int WINAPI WSAIoctl(SOCKET s, DWORD dwIoControlCode, LPVOID lpvInBuffer, DWORD cbInBuffer,
    LPVOID lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned, LPWSAOVERLAPPED lpOverlapped,
    void *lpCompletionRoutine);
int WINAPI WSARecv(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount, LPDWORD lpNumberOfBytesRecvd,
    LPDWORD lpFlags, LPWSAOVERLAPPED lpOverlapped, void *lpCompletionRoutine);
int WINAPI WSASend(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount, LPDWORD lpNumberOfBytesSent,
    DWORD dwFlags, LPWSAOVERLAPPED lpOverlapped, void *lpCompletionRoutine);
BOOL WINAPI WSAGetOverlappedResult(SOCKET s, LPWSAOVERLAPPED lpOverlapped, LPDWORD lpcbTransfer,
    BOOL fWait, LPDWORD lpdwFlags);
int WINAPI WSAGetLastError(void);
SOCKET WINAPI WSASocketW(int af, int type, int protocol, void *lpProtocolInfo, GROUP g, DWORD dwFlags);
int WINAPI closesocket(SOCKET s);
int WINAPI setsockopt(SOCKET s, int level, int optname, const char *optval, int optlen);
"""

ffi = cffi.FFI()
ffi.cdef(CDEF)

# ---- magic numbers (winbase.h, winerror.h, winsock2.h, mswsock.h, mswsockdef.h) ----
INFINITE = 0xFFFFFFFF
WAIT_TIMEOUT = 258
ERROR_INVALID_PARAMETER = 87
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997
ERROR_NOT_FOUND = 1168
STATUS_SUCCESS = 0
STATUS_CANCELLED = 0xC0000120  # NTSTATUS left in OVERLAPPED.Internal by an aborted request
STATUS_REQUEST_ABORTED = 0xC0000240
STATUS_LOCAL_DISCONNECT = 0xC000013B  # e.g. a request aborted because its socket was closed
WSAEINTR = 10004
WSAENOTSOCK = 10038
WSAECONNABORTED = 10053

# NTSTATUS (ntstatus.h) -> the Winsock error WSAGetOverlappedResult would report (the AFD driver's
# mapping; libuv's uv_ntstatus_to_winsock_error lists the same pairs). Mapping in hand avoids asking
# WSAGetOverlappedResult about a socket handle that may already be closed or reused.
_NTSTATUS_TO_WSA = {
    STATUS_CANCELLED: ERROR_OPERATION_ABORTED,  # CancelIoEx or closesocket
    STATUS_REQUEST_ABORTED: ERROR_OPERATION_ABORTED,
    0xC0000008: WSAENOTSOCK,  # STATUS_INVALID_HANDLE
    0xC0000024: WSAENOTSOCK,  # STATUS_OBJECT_TYPE_MISMATCH
    0xC000009A: 10055,  # STATUS_INSUFFICIENT_RESOURCES -> WSAENOBUFS
    0xC000020A: 10048,  # STATUS_ADDRESS_ALREADY_EXISTS -> WSAEADDRINUSE
    0xC00000B5: 10060,  # STATUS_IO_TIMEOUT -> WSAETIMEDOUT
    0xC000013F: 10060,  # STATUS_LINK_TIMEOUT
    0xC0000237: 10101,  # STATUS_GRACEFUL_DISCONNECT -> WSAEDISCON
    0xC000013C: 10054,  # STATUS_REMOTE_DISCONNECT -> WSAECONNRESET
    0xC000020D: 10054,  # STATUS_CONNECTION_RESET
    0xC000013E: 10054,  # STATUS_LINK_FAILED
    0xC000020C: 10054,  # STATUS_CONNECTION_DISCONNECTED
    0xC000023F: 10054,  # STATUS_PORT_UNREACHABLE
    STATUS_LOCAL_DISCONNECT: WSAECONNABORTED,
    0xC0000241: WSAECONNABORTED,  # STATUS_CONNECTION_ABORTED
    0xC000023C: 10051,  # STATUS_NETWORK_UNREACHABLE -> WSAENETUNREACH
    0xC000023E: 10051,  # STATUS_PROTOCOL_UNREACHABLE
    0xC000023D: 10065,  # STATUS_HOST_UNREACHABLE -> WSAEHOSTUNREACH
    0x80000005: 10040,  # STATUS_BUFFER_OVERFLOW -> WSAEMSGSIZE
    0xC0000140: 10057,  # STATUS_INVALID_CONNECTION -> WSAENOTCONN
    0xC0000236: 10061,  # STATUS_CONNECTION_REFUSED -> WSAECONNREFUSED
    0xC00000BC: 10061,  # STATUS_REMOTE_NOT_LISTENING
    0xC00000B0: 10058,  # STATUS_PIPE_DISCONNECTED -> WSAESHUTDOWN
    0xC0000141: 10049,  # STATUS_INVALID_ADDRESS -> WSAEADDRNOTAVAIL
    0xC0000022: 10013,  # STATUS_ACCESS_DENIED -> WSAEACCES
}
_FACILITY_NTWIN32 = 0x7


def winsock_error_of(ntstatus: int) -> int:
    """The Winsock error of a failed request's NTSTATUS (its low 32 bits: OVERLAPPED.Internal is a
    ULONG_PTR whose upper half is not part of the status, see HasOverlappedIoCompleted). A Win32
    error wrapped as NTSTATUS (FACILITY_NTWIN32) is unwrapped; an unknown status passes through."""
    status = ntstatus & 0xFFFFFFFF
    found = _NTSTATUS_TO_WSA.get(status)
    if found is not None:
        return found
    if (status >> 16) & 0xFFF == _FACILITY_NTWIN32 and status & 0xC0000000:
        return status & 0xFFFF
    return status
SOCKET_ERROR = -1
INVALID_SOCKET = (1 << (8 * ffi.sizeof("SOCKET"))) - 1

FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 0x1
FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2

# _WSAIORW(IOC_WS2, n) = IOC_INOUT (0xC0000000) | IOC_WS2 (0x08000000) | n
SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006
SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER = 0xC8000024

WSA_FLAG_OVERLAPPED = 0x01
WSA_FLAG_NO_HANDLE_INHERIT = 0x80
WSA_FLAG_REGISTERED_IO = 0x100

SOL_SOCKET = 0xFFFF  # Winsock's value (Linux's socket.SOL_SOCKET is 1): for ws2_32.setsockopt
SO_UPDATE_ACCEPT_CONTEXT = 0x700B
SO_UPDATE_CONNECT_CONTEXT = 0x7010

RIO_IOCP_COMPLETION = 2
RIO_CORRUPT_CQ = 0xFFFFFFFF
RIO_INVALID_BUFFERID = 0xFFFFFFFF  # (RIO_BUFFERID)0xFFFFFFFF
RIO_MAX_CQ_SIZE = 0x8000000
RIO_MSG_DONT_NOTIFY = 0x1
RIO_MSG_DEFER = 0x2
RIO_MSG_WAITALL = 0x4
RIO_MSG_COMMIT_ONLY = 0x8

# GUIDs as (Data1, Data2, Data3, Data4)
WSAID_ACCEPTEX = (0xB5367DF1, 0xCBAC, 0x11CF, (0x95, 0xCA, 0x00, 0x80, 0x5F, 0x48, 0xA1, 0x92))
WSAID_GETACCEPTEXSOCKADDRS = (0xB5367DF2, 0xCBAC, 0x11CF, (0x95, 0xCA, 0x00, 0x80, 0x5F, 0x48, 0xA1, 0x92))
WSAID_CONNECTEX = (0x25A207B9, 0xDDF3, 0x4660, (0x8E, 0xE9, 0x76, 0xE5, 0x8C, 0x74, 0x06, 0x3E))
WSAID_MULTIPLE_RIO = (0x8509E081, 0x96DD, 0x4005, (0xB1, 0x65, 0x9E, 0x2E, 0xE8, 0xC7, 0x9E, 0x3F))

GuidSpec = tuple[int, int, int, tuple[int, ...]]


def new_guid(spec: GuidSpec) -> Any:
    """A `GUID *` filled from a (Data1, Data2, Data3, Data4) tuple."""
    guid = ffi.new("GUID *")
    guid.Data1, guid.Data2, guid.Data3 = spec[0], spec[1], spec[2]
    for i, b in enumerate(spec[3]):
        guid.Data4[i] = b
    return guid


# ---- lazily opened libraries ----
@dataclass(frozen=True)
class WinLibs:
    kernel32: Any
    ws2_32: Any


_libs: WinLibs | None = None


def load() -> WinLibs:
    """Open kernel32 and ws2_32 (once). Raises OSError off Windows or when a DLL cannot load."""
    global _libs
    if _libs is None:
        if sys.platform != "win32":
            raise OSError(f"kernel32/ws2_32 exist only on Windows (this is {sys.platform})")
        _libs = WinLibs(ffi.dlopen("kernel32.dll"), ffi.dlopen("ws2_32.dll"))
    return _libs


def winerror_exc(code: int, what: str) -> OSError:
    """An OSError carrying a Windows error code (`.winerror`), readable on any OS."""
    message = f"{what} failed (error {code})"
    try:
        found = ffi.getwinerror(code)  # Windows only
    except AttributeError:  # off Windows (the stand-in kernels) there is no message table
        found = None
    if found:
        message = f"{what}: {found[1]}"
    exc = OSError(message)
    exc.winerror = code  # type: ignore[attr-defined]
    return exc


def last_error() -> int:
    """GetLastError as cffi saved it after the previous call."""
    err = ffi.getwinerror()
    return err[0] if err else 0


def handle_of(sock: socket.socket | int) -> Any:
    fd = sock if isinstance(sock, int) else sock.fileno()
    return ffi.cast("HANDLE", fd)


def socket_of(sock: socket.socket | int) -> Any:
    fd = sock if isinstance(sock, int) else sock.fileno()
    return ffi.cast("SOCKET", fd)


def load_extension(libs: WinLibs, sock: socket.socket | int, guid: GuidSpec, fntype: str) -> Any:
    """One Winsock extension function pointer (AcceptEx, ConnectEx, ...) for `sock`'s provider."""
    out = ffi.new(f"{fntype} *")
    nbytes = ffi.new("DWORD *")
    rc = libs.ws2_32.WSAIoctl(
        socket_of(sock),
        SIO_GET_EXTENSION_FUNCTION_POINTER,
        new_guid(guid),
        ffi.sizeof("GUID"),
        out,
        ffi.sizeof(fntype),
        nbytes,
        ffi.NULL,
        ffi.NULL,
    )
    if rc != 0:
        raise winerror_exc(libs.ws2_32.WSAGetLastError(), f"WSAIoctl({fntype})")
    return out[0]


def load_rio_table(libs: WinLibs, sock: socket.socket | int) -> Any:
    """The RIO_EXTENSION_FUNCTION_TABLE (Windows 8+); OSError when the provider has no RIO."""
    table = ffi.new("RIO_EXTENSION_FUNCTION_TABLE *")
    table.cbSize = ffi.sizeof("RIO_EXTENSION_FUNCTION_TABLE")
    nbytes = ffi.new("DWORD *")
    rc = libs.ws2_32.WSAIoctl(
        socket_of(sock),
        SIO_GET_MULTIPLE_EXTENSION_FUNCTION_POINTER,
        new_guid(WSAID_MULTIPLE_RIO),
        ffi.sizeof("GUID"),
        table,
        ffi.sizeof("RIO_EXTENSION_FUNCTION_TABLE"),
        nbytes,
        ffi.NULL,
        ffi.NULL,
    )
    if rc != 0:
        raise winerror_exc(libs.ws2_32.WSAGetLastError(), "WSAIoctl(WSAID_MULTIPLE_RIO)")
    return table


# ---- socket addresses ----
def sockaddr_from_address(family: int, address: Any) -> tuple[Any, int]:
    """Build a `struct sockaddr_in/_in6` for `address` ((host, port) or (host, port, flow, scope)).
    Numeric hosts are used as they are; names resolve through getaddrinfo for `family`."""
    host, port = address[0], int(address[1])
    if family == socket.AF_INET6:
        try:
            packed = socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            packed = socket.inet_pton(socket.AF_INET6, _resolve(family, host, port))
        sa = ffi.new("struct sockaddr_in6 *")
        sa.sin6_family = family
        sa.sin6_port = socket.htons(port)
        sa.sin6_flowinfo = int(address[2]) if len(address) > 2 else 0
        sa.sin6_scope_id = int(address[3]) if len(address) > 3 else 0
        ffi.memmove(sa.sin6_addr.u.Byte, packed, 16)
        return sa, ffi.sizeof("struct sockaddr_in6")
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        packed = socket.inet_pton(socket.AF_INET, _resolve(family, host, port))
    sa4 = ffi.new("struct sockaddr_in *")
    sa4.sin_family = family
    sa4.sin_port = socket.htons(port)
    sa4.sin_addr.S_un.S_addr = struct.unpack("=I", packed)[0]  # bytes stay in network order
    return sa4, ffi.sizeof("struct sockaddr_in")


def _resolve(family: int, host: str, port: int) -> str:
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    return str(infos[0][4][0])


def address_from_sockaddr(ptr: Any, length: int) -> Any:
    """The Python address tuple of a `struct sockaddr *` (as socket.getpeername would give)."""
    if ptr == ffi.NULL or length < ffi.sizeof("struct sockaddr_in"):
        return None
    family = ptr.sa_family
    if family == socket.AF_INET6 and length >= ffi.sizeof("struct sockaddr_in6"):
        sa6 = ffi.cast("struct sockaddr_in6 *", ptr)
        host = socket.inet_ntop(socket.AF_INET6, bytes(ffi.buffer(sa6.sin6_addr.u.Byte, 16)))
        return (host, socket.ntohs(sa6.sin6_port), sa6.sin6_flowinfo, sa6.sin6_scope_id)
    sa4 = ffi.cast("struct sockaddr_in *", ptr)
    host = socket.inet_ntop(socket.AF_INET, struct.pack("=I", sa4.sin_addr.S_un.S_addr))
    return (host, socket.ntohs(sa4.sin_port))
