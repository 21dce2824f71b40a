"""`python -m examples.gameserver [--config FILE]`: run the example game server.

With no file it runs on the default config (127.0.0.1 and ::1, port 7777). Stop it with
Ctrl-C or SIGTERM: sessions are told (`shutdown` message), drained and closed; exit status 0.
"""

from __future__ import annotations

import argparse
import sys

from examples.gameserver.app import GameSession
from framework.__main__ import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gameserver", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", default=None, help="deployment YAML (default: the default config)")
    args = parser.parse_args(argv)
    return serve(GameSession, args.config)


if __name__ == "__main__":
    sys.exit(main())
