"""Where the development pack is found ($ACULA_DEV_PACK), and that CI fails rather than skips without it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from acula_eval.tasks import load_task
from modeling_acula.file_utils import IN_TREE_DEV_PACK, default_dev_pack

REPO = Path(__file__).resolve().parents[1]
THIS_TEST = f"{Path(__file__).relative_to(REPO)}::test_dev_pack_fixture_is_the_configured_folder"


def test_dev_pack_fixture_is_the_configured_folder(dev_pack):
    expected = os.environ.get("ACULA_DEV_PACK")
    assert dev_pack == (Path(expected) if expected else IN_TREE_DEV_PACK)
    assert (dev_pack / "metadata.csv").is_file()


def test_acula_dev_pack_variable_is_honoured(tmp_path, monkeypatch):
    monkeypatch.delenv("ACULA_DEV_PACK", raising=False)
    assert default_dev_pack() == IN_TREE_DEV_PACK == REPO.parent / "shared" / "data" / "auscultation-dev"
    monkeypatch.setenv("ACULA_DEV_PACK", str(tmp_path / "elsewhere"))
    assert default_dev_pack() == tmp_path / "elsewhere"
    # the dev-pack tasks read it too (here: a folder without metadata.csv, named in the error)
    with pytest.raises(ValueError, match=r"no metadata\.csv in .*elsewhere.*ACULA_DEV_PACK"):
        load_task("pascal_murmur")


def _pytest(env: dict) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("ACULA_DEV_PACK", "ACULA_REQUIRE_DEV_PACK", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", THIS_TEST],
                          capture_output=True, text=True, cwd=REPO, env={**environment, **env}, timeout=300)


def test_tests_read_the_pack_named_by_acula_dev_pack(tmp_path):
    (tmp_path / "metadata.csv").write_text("file\n")
    result = _pytest({"ACULA_DEV_PACK": str(tmp_path)})
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_missing_pack_fails_the_session_when_required(tmp_path):
    missing = tmp_path / "missing"
    result = _pytest({"ACULA_DEV_PACK": str(missing), "ACULA_REQUIRE_DEV_PACK": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output[-3000:]
    assert "The dev pack is required" in output and str(missing / "metadata.csv") in output
    assert "passed" not in result.stdout and "skipped" not in result.stdout
