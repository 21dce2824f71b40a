"""A chat server and client written the RAON way (IocpObjectSession, PacketHeader framing, on_recv
returning consumed bytes, an auto-reconnecting client service), running on any backend:

    python -m examples.legacy_chat --backend epoll --port 7000              # server
    python -m examples.legacy_chat client --port 7000 --name alice          # client (stdin lines)
"""
