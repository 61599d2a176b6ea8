"""The package as a user installs it: a wheel built from the repository, installed into a fresh virtual
environment (no editable install, no repository on the path), segments the sample case with the
bundled model it carries. Slow: it installs torch and the runtime dependencies (run with -m slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, timeout=1800):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_in_a_fresh_venv_predicts_the_sample_case(tmp_path):
    import shutil

    # built from a clean copy: setuptools' build/ staging folder would otherwise carry old files along
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "data", "runs", "out",
                                                                 "*.egg-info", "__pycache__", ".pytest_cache"))
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source], cwd=tmp_path)
    (wheel,) = wheels.glob("lacunes-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert "lacunes/bundled/lacunes.pt" in names and "lacunes/bundled/lacunes.pt.sha256" in names

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=tmp_path)  # the CPU build, first and pinned
    run([py, "-m", "pip", "install", "-q", wheel], cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "elsewhere"  # not the repository: nothing may be found through the working directory
    work.mkdir()
    lacunes = venv / "bin" / "lacunes"
    version = run([lacunes, "--version"], cwd=work, env=env).stdout
    assert version.startswith("lacunes ")
    where = run([py, "-c", "import lacunes.checkpoint as c; print(c.bundled_checkpoint())"], cwd=work, env=env).stdout
    assert str(venv) in where and "bundled" in where  # the package's own copy, not the repository's

    out = work / "out"
    result = run([lacunes, "predict", "-i", ROOT / "test", "-o", out, "--preset", "fast", "--no-progress",
                  "--table"], cwd=work, env=env)
    assert "1 done" in result.stdout + result.stderr
    maps = sorted(p.name for p in out.glob("*.nii.gz"))
    assert any("prediction" in m for m in maps) and any("uncertainty" in m for m in maps), maps
    record = json.loads((out / "run.json").read_text())
    assert record  # the completion record the runner keeps

    # --qc needs the [qc] extra: without it, a clear message instead of a traceback
    qc = subprocess.run([str(lacunes), "predict", "-i", str(ROOT / "test"), "-o", str(work / "qc"), "--preset", "fast",
                         "--qc", "--no-progress"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert qc.returncode != 0 and "lacunes[qc]" in qc.stdout + qc.stderr
    assert "Traceback" not in qc.stderr
