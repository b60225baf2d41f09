"""ansible-lint (production profile) and ansible-playbook --syntax-check on ansible/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    tool = str(beside) if beside.exists() else shutil.which(name)
    if tool is None:
        pytest.skip(f"{name} is not installed: run `tox -e deploy`")
    return tool


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), NO_COLOR="1")
    return subprocess.run(argv, capture_output=True, text=True, cwd=ANSIBLE_DIR, env=env, timeout=300)


def test_ansible_lint_passes_the_production_profile() -> None:
    proc = _run(_tool("ansible-lint"), "--offline", "--profile", "production")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passed" in proc.stdout + proc.stderr


def test_playbook_syntax_check() -> None:
    proc = _run(_tool("ansible-playbook"), "--syntax-check", "-i", "environments/local/hosts",
                "gpu-invoker.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: gpu-invoker.yml" in proc.stdout


def test_syntax_check_catches_a_broken_playbook(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  tasks:\n    - ansible.builtin.no_such_module: {}\n")
    proc = _run(_tool("ansible-playbook"), "--syntax-check", "-i", "environments/local/hosts", str(broken))
    assert proc.returncode != 0
