"""Helpers of the example-action tests: where the actions are, and running their Node scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The standalone-mode helpers live beside the standalone tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "standalone"))

from standalone_support import ROOT, Standalone  # noqa: E402

ACTIONS = ROOT / "actions"

# scikit-image's wheel ships these photos (skimage/data); the labels a right answer may have.
PHOTOS = {
    "chelsea.png": {"Egyptian cat", "tabby, tabby cat", "tiger cat"},
    "coffee.png": {"espresso"},
    "rocket.jpg": {"missile", "projectile, missile", "space shuttle"},
}


def node(server: Standalone, script: Path, *args: str, timeout_s: float = 300, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["node", str(script), *args], cwd=ROOT, env={**server.node_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{script.name}: {done.stderr}\nserver:\n" + "\n".join(server.output[-20:])
    return done.stdout
