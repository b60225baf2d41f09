"""Helpers of the fault tests: actions and a pouchdb-server that keeps its data on disk."""

from __future__ import annotations

import time
from pathlib import Path

from services import CouchServer

ECHO = "def main(args):\n    return args\n"
# Notes its start in args["journal"] (when given), so a test knows it is running.
SLEEPER = """
import os, time
def main(args):
    if "journal" in args:
        with open(args["journal"], "a") as journal:
            journal.write(os.environ["__OW_ACTIVATION_ID"] + "\\n")
    time.sleep(args.get("sleep", 0))
    return {"slept": args.get("sleep", 0), "n": args.get("n")}
"""


class PersistentCouch(CouchServer):
    """pouchdb-server on LevelDOWN files in its workdir: a restart keeps the databases."""

    def command(self) -> list[str]:
        data = Path(self.workdir) / "data"
        data.mkdir(exist_ok=True)
        return [*(arg for arg in super().command() if arg != "--in-memory"), "--dir", str(data)]


def wait_started(journal: Path, count: int, timeout_s: float = 60.0) -> None:
    """Until ``count`` runs have noted their start in ``journal``."""
    deadline = time.monotonic() + timeout_s
    while not journal.exists() or len(journal.read_text().splitlines()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} runs started"
        time.sleep(0.05)
