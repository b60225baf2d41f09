"""Helpers of the fault tests: actions and a pouchdb-server that keeps its data on disk."""

from __future__ import annotations

from pathlib import Path

from services import CouchServer

ECHO = "def main(args):\n    return args\n"
SLEEPER = """
import time
def main(args):
    time.sleep(args.get("sleep", 0))
    return {"slept": args.get("sleep", 0), "n": args.get("n")}
"""


class PersistentCouch(CouchServer):
    """pouchdb-server on LevelDOWN files in its workdir: a restart keeps the databases."""

    def command(self) -> list[str]:
        data = Path(self.workdir) / "data"
        data.mkdir(exist_ok=True)
        return [*(arg for arg in super().command() if arg != "--in-memory"), "--dir", str(data)]
