"""``bench/faults.py --smoke``: the soak stays runnable, and under a broker kill, a store stop
and an invoker SIGKILL it loses nothing (issue #12, point 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_soak_smoke_loses_nothing_under_every_fault(tmp_path):
    out = tmp_path / "faults.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["fault"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none (baseline)", "broker", "store", "sigkill"}
    for name, row in rows.items():
        assert row["sent"] > 0 and row["lost"] == 0 and row["records"] == row["sent"], row
        assert row["completed"] == row["sent"], row
        if name != "sigkill":  # only a crash may run something twice or ack it twice
            assert row["run_twice"] == 0 and row["duplicate_acks"] == 0, row
    assert "| fault | sent | completed |" in done.stdout
