"""Shared test set-up: everything offline, temporary caches, real recordings from the dev pack."""

import atexit
import os
import shutil
import tempfile

# Set before transformers / huggingface_hub are imported anywhere: a Hub call that cannot connect
# otherwise retries for about a minute before failing.
_HF_HOME = tempfile.mkdtemp(prefix="acula-test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_PACK = REPO_ROOT.parent / "shared" / "data" / "auscultation-dev"


@pytest.fixture(scope="session")
def dev_pack() -> Path:
    """The shared dev pack of real recordings; tests that need it are skipped where it is absent."""
    if not (DEV_PACK / "metadata.csv").exists():
        pytest.skip(f"dev pack not found at {DEV_PACK}")
    return DEV_PACK
