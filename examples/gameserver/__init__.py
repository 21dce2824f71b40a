"""A small multiplayer game server on the framework: rooms, server-authoritative movement at a fixed
tick rate, chat and ping. `game.py` holds the rules (sans-IO), `protocol.py` the messages (see
PROTOCOL.md), `app.py` the Session glue; `bot.py` and `client.py` are clients."""
