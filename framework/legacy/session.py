"""RAON IocpObjectSession: one TCP connection, written against completion callbacks.

The life of a session, as in RAON:
- accepted (by a listener) or `connect()`ed; `on_connect(success)` reports either;
- one recv is always outstanding into the session's recv buffer; `on_recv(buf, len)` sees every
  byte not yet consumed and returns how many it consumed; the rest stays and is presented again,
  followed by the next data (this is how a partial packet waits for its tail);
- `reserve_send` queues a packet, `flush_send` sends everything queued as ONE send operation
  (the gathered WSASend); `send` is both; while a send is in flight new packets queue and go out
  together when it completes; `on_send(len, packet_id)` reports each packet once written;
- `disconnect(reason)` stops new sends, lets every packet already accepted by `send` /
  `reserve_send` go out (IOCP's graceful close; `abortive=True` drops them and resets), then issues
  DisconnectEx; every operation still pending completes (CANCELLED), and when the reference count
  reaches zero the socket is closed, `on_disconnect()` runs and the session goes back to its
  coordinator (pool / reconnect) after `reset()`; `kick_reason` / `disconnect_reason` say why.

The reference count is what makes this safe: the session is never reset or reused while the
provider still owes it a completion. A pooled session nobody uses has the count UNUSED (-1), so a
stray `add_ref()` on it returns <= 0 and takes no reference (RAON's convention).
"""

from __future__ import annotations

import socket
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import structlog

from framework.io.errors import describe
from framework.io.provider import Status
from framework.legacy.core import IocpCore, IocpObject, IoType, OverlappedEx, discard_unread
from framework.legacy.packet import packet_id_of

if TYPE_CHECKING:
    from framework.legacy.service import ServiceCoordinator

log = structlog.get_logger("framework.legacy")


class KickReason(IntEnum):
    """RAON IO_SESSION_KICK_REASON: why a session was disconnected (`session.kick_reason`).
    `disconnect_reason` keeps the readable text (with details such as the OS error)."""

    NONE = 0  # still connected
    KICKED = 1  # the application called disconnect() (a free-text reason maps here)
    CLOSED_BY_PEER = 2
    IO_ERROR = 3  # a send or receive failed
    CONNECT_FAILED = 4
    HANDLER_ERROR = 5  # a callback raised
    BAD_RECV = 6  # on_recv returned an impossible byte count
    RECV_BUFFER_FULL = 7  # on_recv consumed nothing of a full buffer
    SEND_QUEUE_FULL = 8  # the peer does not read (closed abortively)
    POST_FAILED = 9  # an operation could not be posted (provider shut down)
    SERVICE_STOPPED = 10

    @property
    def text(self) -> str:
        """The reason in words, e.g. "recv buffer full" (`disconnect_reason` when no detail was given)."""
        return self.name.lower().replace("_", " ")


class SessionType(IntEnum):
    """RAON SessionType (`get_session_type()`): how the session's current connection was made."""

    NONE = 0  # not connected
    SERVER = 1  # accepted by a listener
    CLIENT = 2  # connected out by connect()


def _describe_failure(overlapped: OverlappedEx) -> str:
    status = Status(overlapped.status).name.lower()
    return f"{overlapped.io_type.name.lower()} {status}: {describe(overlapped.error_code)}"


class IocpObjectSession(IocpObject):
    """Subclass and override the `on_*` callbacks (see the module docstring)."""

    RECV_BUFFER_SIZE = 64 * 1024
    MAX_SEND_QUEUE = 4 * 1024 * 1024  # queued-but-unsent bytes before the peer counts as stuck

    def __init__(self, recv_buffer_size: int | None = None) -> None:
        super().__init__()
        self.coordinator: ServiceCoordinator | None = None
        self.session_id = 0  # index in its pool
        self.generation = 0  # incremented by reset(): tells reuses of one object apart in logs
        self.peer_address: Any = None
        self.disconnect_reason = ""
        self.kick_reason = KickReason.NONE
        self.session_type = SessionType.NONE
        self._refs = self.UNUSED  # pooled, unused: add_ref() refuses until a connection arrives
        self._abortive = False
        self._sock: socket.socket | None = None
        self._registered = False
        self._connected = False
        self._connecting = False
        self._disconnecting = False
        self._recv_buf = bytearray(recv_buffer_size or self.RECV_BUFFER_SIZE)
        self._recv_len = 0
        self._recv_ov = OverlappedEx(IoType.RECV, owner=self)
        self._send_ov = OverlappedEx(IoType.SEND, owner=self)
        self._connect_ov = OverlappedEx(IoType.CONNECT, owner=self)
        self._disconnect_ov = OverlappedEx(IoType.DISCONNECT, owner=self)
        # Double buffer: packets are reserved into one while the other is on the wire.
        self._reserved = bytearray()
        self._reserved_packets: list[tuple[int, int]] = []  # (len, packet id)
        self._sending = bytearray()
        self._sending_packets: list[tuple[int, int]] = []
        self._send_in_flight = False

    # ------------------------------------------------------------------ state
    def get_handle(self) -> socket.socket | None:
        """The connection's socket (None while the session is idle)."""
        return self._sock

    @property
    def is_connected(self) -> bool:
        """Connected and not disconnecting (RAON IsConnected)."""
        return self._connected and not self._disconnecting

    @property
    def is_idle(self) -> bool:
        """No socket and no operation outstanding: free to connect or to be pooled."""
        return self._sock is None and self._refs <= 0

    def get_session_type(self) -> SessionType:
        """GetSessionType(): SERVER (accepted), CLIENT (connected out) or NONE."""
        return self.session_type

    @property
    def queued_send_bytes(self) -> int:
        """Bytes reserved for sending and not yet written (the ones on the wire included)."""
        return len(self._reserved) + (len(self._sending) if self._send_in_flight else 0)

    # ------------------------------------------------------------------ callbacks to override
    def on_connect(self, success: bool) -> None:
        """Connected (accepted, or an outgoing connect finished); `success` False: connect failed."""

    def on_send(self, length: int, packet_id: int) -> None:
        """A packet reserved earlier was written completely."""

    def on_recv(self, buf: memoryview, length: int) -> int:
        """`buf[:length]` holds every byte not consumed yet; return how many bytes were consumed
        (the rest is presented again with the next data). `buf` is valid only during the call."""
        return length

    def on_disconnect(self) -> None:
        """The connection is gone and every operation finished; `disconnect_reason` says why."""

    # ------------------------------------------------------------------ RAON API
    def connect(self, address: Any = None, timeout_ms: int | None = None) -> bool:
        """Start an outgoing connection (ConnectEx); `on_connect` reports the outcome."""
        core = self.core if self.core is not None else (self.coordinator.core if self.coordinator else None)
        if core is None:
            raise RuntimeError("session has no IocpCore (use a client service or set session.core)")
        if address is None and self.coordinator is not None:
            address = self.coordinator.address
            if timeout_ms is None:
                timeout_ms = self.coordinator.connect_timeout_ms
        if address is None:
            raise ValueError("connect() needs an address")
        if not self.is_idle:
            return False
        family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("connect: socket() failed", error=str(exc))
            return False
        if not self._attach(core, sock, address, SessionType.CLIENT):
            return False
        self._connecting = True
        self.add_ref()
        if not core.connect_ex(self, self._connect_ov, address, timeout_ms):
            self._connecting = False
            self.release()
            self._close_socket()
            self._refs = self.UNUSED
            self.session_type = SessionType.NONE
            return False
        return True

    def send(self, buffer: bytes | bytearray | memoryview, length: int | None = None) -> bool:
        """Send(buffer, len): reserve and flush."""
        return self.reserve_send(buffer, length) and self.flush_send()

    def reserve_send(self, buffer: bytes | bytearray | memoryview, length: int | None = None) -> bool:
        """Queue `buffer[:length]` (copied) for the next flush_send."""
        if not self.is_connected:
            return False
        data = memoryview(buffer)
        if length is not None:
            data = data[:length]
        if self.queued_send_bytes + len(data) > self.MAX_SEND_QUEUE:
            # Abortive: what is queued would only wait for a peer that does not read.
            self.disconnect(
                KickReason.SEND_QUEUE_FULL, "send queue over MAX_SEND_QUEUE (peer not reading)", abortive=True
            )
            return False
        self._reserved += data
        self._reserved_packets.append((len(data), packet_id_of(data)))
        return True

    def flush_send(self) -> bool:
        """Send everything reserved as one operation; when a send is already in flight, the queued
        packets follow as one send as soon as it completes."""
        if not self.is_connected:
            return False
        return self._post_send()

    def _post_send(self) -> bool:
        """Put the reserved packets on the wire unless a send is in flight (it follows then)."""
        if self._send_in_flight or not self._reserved:
            return True
        self._sending, self._reserved = self._reserved, self._sending
        self._sending_packets, self._reserved_packets = self._reserved_packets, self._sending_packets
        self._send_in_flight = True
        self._send_ov.wsa_buf = memoryview(self._sending)
        self.add_ref()
        assert self.core is not None  # connected sessions are registered
        if not self.core.wsa_send(self, self._send_ov):
            self._send_in_flight = False
            self.release()
            self.disconnect(KickReason.POST_FAILED, "send could not be posted")
            return False
        return True

    def disconnect(
        self,
        reason: KickReason | str = KickReason.KICKED,
        detail: str = "",
        *,
        abortive: bool = False,
        linger_ms: int | None = None,
    ) -> None:
        """Disconnect(reason): no new sends; every packet already accepted goes out first (for
        at most `linger_ms`, IocpCore.DISCONNECT_LINGER_MS by default), then the connection
        closes. `abortive=True` drops them and resets the connection (SO_LINGER 0); it also
        hurries a graceful close already waiting. on_disconnect follows once all I/O finished.
        `reason` is a KickReason or free text (then kick_reason is KICKED)."""
        if self._disconnecting:
            if abortive and self._deferred_disconnect is not None:  # a graceful close still waits
                self._abortive = True
                self._reserved.clear()
                self._reserved_packets.clear()
                assert self.core is not None
                self.core.disconnect_ex(self, self._disconnect_ov, abortive=True)
            return
        if not self._connected and not self._connecting:
            return
        self._disconnecting = True
        self._abortive = abortive
        if isinstance(reason, KickReason):
            self.kick_reason = reason
            self.disconnect_reason = detail or reason.text
        else:
            self.kick_reason = KickReason.KICKED
            self.disconnect_reason = reason
        self.add_ref()
        if abortive:
            self._reserved.clear()
            self._reserved_packets.clear()
        elif self._connected:
            self._post_send()  # reserved but not flushed yet: accepted all the same
        assert self.core is not None
        if not self.core.disconnect_ex(self, self._disconnect_ov, abortive=abortive, linger_ms=linger_ms):
            self.release()  # provider gone: nothing more will complete

    def reset(self) -> None:
        """Reset(): back to the pooled state. Subclasses reset their own fields and call super()."""
        self.generation += 1
        self.peer_address = None
        self.session_type = SessionType.NONE
        self._connected = self._connecting = self._disconnecting = self._abortive = False
        self._recv_len = 0
        self._reserved.clear()
        self._reserved_packets.clear()
        self._sending_packets.clear()
        self._send_in_flight = False
        try:
            self._sending.clear()
        except BufferError:  # a stale view of the last send is still alive somewhere
            self._sending = bytearray()

    # ------------------------------------------------------------------ used by the listener
    def accept(self, sock: socket.socket, address: Any) -> bool:
        """Take an accepted connection (the AcceptEx completion, on the session's side)."""
        core = self.coordinator.core if self.coordinator is not None else self.core
        if core is None or not self.is_idle:
            return False
        if not self._attach(core, sock, address, SessionType.SERVER):
            return False
        self._on_established()
        return True

    def _attach(self, core: IocpCore, sock: socket.socket, address: Any, session_type: SessionType) -> bool:
        """Take `sock` and associate it with `core`; on failure the socket is closed."""
        self._sock = sock
        self.peer_address = address
        self.disconnect_reason = ""
        self.kick_reason = KickReason.NONE
        if not core.register_iocp_object(self):
            self._close_socket()
            return False
        self._registered = True
        self._refs = 0  # in use: references count again
        self.session_type = session_type
        return True

    # ------------------------------------------------------------------ completions
    def handle_iocp(self, overlapped: OverlappedEx, bytes_transferred: int) -> None:
        """Dispatch a receive, send, connect or disconnect completion to the session's `on_*`
        callbacks, then release the reference the operation held."""
        io_type = overlapped.io_type
        try:
            if io_type == IoType.RECV:
                self._recv_done(overlapped, bytes_transferred)
            elif io_type == IoType.SEND:
                self._send_done(overlapped, bytes_transferred)
            elif io_type == IoType.CONNECT:
                self._connect_done(overlapped)
            elif io_type == IoType.DISCONNECT:
                pass  # every earlier completion has been counted down already
        finally:
            self.release()

    def on_iocp_error(self, overlapped: OverlappedEx, exc: BaseException) -> None:
        # A callback raised: the session's state is unknown, so it goes, as RAON closes it.
        self.disconnect(KickReason.HANDLER_ERROR, f"handler raised {type(exc).__name__}: {exc}")

    def _connect_done(self, overlapped: OverlappedEx) -> None:
        self._connecting = False
        if self._disconnecting:
            return
        if not overlapped.ok:
            self.disconnect_reason = _describe_failure(overlapped)
            self.kick_reason = KickReason.CONNECT_FAILED
            self._disconnecting = True  # torn down in on_last_release (no on_disconnect)
            self.on_connect(False)
            return
        self._on_established()

    def _on_established(self) -> None:
        self._connected = True
        self.set_no_delay()  # False when the peer is already gone: the first recv reports it
        if self.coordinator is not None:
            self.coordinator.on_session_connected(self)
        self.on_connect(True)
        if self.is_connected:
            self._post_recv()

    def _post_recv(self) -> None:
        self._recv_ov.wsa_buf = memoryview(self._recv_buf)[self._recv_len :]
        self.add_ref()
        assert self.core is not None
        if not self.core.wsa_recv(self, self._recv_ov):
            self.release()
            self.disconnect(KickReason.POST_FAILED, "recv could not be posted")

    def _recv_done(self, overlapped: OverlappedEx, nbytes: int) -> None:
        overlapped.wsa_buf = None
        if self._disconnecting:
            return
        if not overlapped.ok:
            self.disconnect(KickReason.IO_ERROR, _describe_failure(overlapped))
            return
        if nbytes == 0:
            self.disconnect(KickReason.CLOSED_BY_PEER, "closed by peer")
            return
        total = self._recv_len + nbytes
        buf = self._recv_buf
        consumed = self.on_recv(memoryview(buf)[:total], total)
        if not isinstance(consumed, int) or consumed < 0 or consumed > total:
            self.disconnect(KickReason.BAD_RECV, f"on_recv returned {consumed!r} for {total} bytes")
            return
        rest = total - consumed
        if rest and consumed:
            buf[:rest] = buf[consumed:total]  # same length: no resize, views stay valid
        self._recv_len = rest
        if not self.is_connected:
            return
        if rest == len(buf):
            self.disconnect(KickReason.RECV_BUFFER_FULL, f"recv buffer full ({rest} bytes unconsumed)")
            return
        self._post_recv()

    def _send_done(self, overlapped: OverlappedEx, nbytes: int) -> None:
        view, overlapped.wsa_buf = overlapped.wsa_buf, None
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass  # a derived view still lives; the buffer is replaced in reset() if needed
        self._send_in_flight = False
        packets = self._sending_packets
        try:
            self._sending.clear()
        except BufferError:
            self._sending = bytearray()
        if not overlapped.ok:
            packets.clear()
            if not self._disconnecting:
                self.disconnect(KickReason.IO_ERROR, _describe_failure(overlapped))
            return
        for length, packet_id in packets:
            self.on_send(length, packet_id)
        packets.clear()
        if self._reserved and self._connected and not self._abortive:
            self._post_send()  # also while a graceful close waits: those packets were accepted

    def on_last_release(self) -> None:
        """The last outstanding operation of a disconnecting session completed: close the socket,
        call `on_disconnect` (when it was connected) and go back to the service."""
        if self._disconnecting and self._sock is not None:
            self._finish()

    def _finish(self) -> None:
        """Every completion arrived: close, report, return to the coordinator."""
        was_connected = self._connected
        if self._registered and self.core is not None and not self.core.closed:
            self.core.unregister_iocp_object(self)  # no-op when DisconnectEx detached it
        if not self._abortive and self._sock is not None:
            discard_unread(self._sock)  # unread input would turn the close into a reset
        self._close_socket()
        self._refs = self.UNUSED  # released: a stray add_ref() now returns <= 0
        self._connected = self._connecting = False
        if was_connected:
            try:
                self.on_disconnect()
            except Exception:
                log.exception("on_disconnect raised", session=type(self).__name__)
        if self.coordinator is not None:
            self.coordinator.release_session(self)
        else:
            self.reset()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._registered = False
        if sock is not None:
            sock.close()
