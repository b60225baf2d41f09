"""``python -m sim``: the policy comparison of ``bench/cluster_sim.py``."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "bench" / "cluster_sim.py"), run_name="__main__")
