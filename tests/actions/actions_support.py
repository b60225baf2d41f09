"""Helpers of the example-action tests: where the actions are, and running their Node scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The standalone-mode helpers live beside the standalone tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "standalone"))

from standalone_support import ROOT, Standalone  # noqa: E402

ACTIONS = ROOT / "actions"
# ./dev setup builds the wsk CLI here; OWGPU_WSK names another binary.
WSK_BIN = Path(os.environ.get("OWGPU_WSK") or ROOT / ".cache" / "bin" / "wsk")

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


def wsk_shell(server: Standalone, home: Path) -> dict[str, str]:
    """A user's shell environment with ``wsk`` on PATH, pointed at ``server`` through its own
    properties file (never the user's ~/.wskprops). Skips where no wsk is installed."""
    if not os.access(WSK_BIN, os.X_OK):
        reason = f"no wsk CLI at {WSK_BIN}: ./dev setup builds it, or set OWGPU_WSK"
        if os.environ.get("OWGPU_REQUIRE_WSK") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "wsk").symlink_to(WSK_BIN)
    env = {**os.environ, "HOME": str(home), "WSK_CONFIG_FILE": str(home / "wskprops"),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("__OW_API_HOST", "__OW_API_KEY", "ACTION_NAME"):
        env.pop(key, None)
    done = subprocess.run(["wsk", "property", "set", "--apihost", server.url, "--auth", server.api_key],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return env
