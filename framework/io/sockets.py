"""Listening sockets shared by the session server and the RAON-style legacy listener."""

from __future__ import annotations

import socket


def open_listener(
    host: str, port: int, backlog: int, reuse_port: bool = False, v6only: bool = True
) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; the family follows the host.

    SO_REUSEADDR always, so a restarted server rebinds a port with connections in TIME_WAIT;
    SO_REUSEPORT when asked (worker processes share one port). `v6only` keeps an IPv6 listener
    off IPv4, so "0.0.0.0" and "::" can be bound side by side. Raises OSError (the socket closed)
    when the host does not resolve or the bind/listen fails.
    """
    family, type_, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and v6only:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
