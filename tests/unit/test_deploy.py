"""Deployment files are checked statically: no Docker engine runs in CI."""

from __future__ import annotations

import re
from pathlib import Path

from streamrec.stream.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_every_streamrec_variable_in_deploy_files_is_a_real_setting() -> None:
    known = {f"STREAMREC_{name.upper()}" for name in Settings.model_fields}
    used = set()
    for path in DEPLOY.iterdir():
        if path.is_file():
            used |= set(re.findall(r"STREAMREC_[A-Z0-9_]+", path.read_text()))
    assert used, "deploy files set no STREAMREC_* variable"
    assert used <= known, f"unknown settings in deploy/: {sorted(used - known)}"


def test_dockerfile_pins_cpu_torch_before_the_project() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.index("torch==2.13.0") < text.index("pip install --no-cache-dir .")
