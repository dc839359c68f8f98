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

from modeling_acula.file_utils import DEV_PACK_ENV, default_dev_pack  # noqa: E402

DEV_PACK = default_dev_pack()
# CirCor in its official layout (16 patients, 47 recordings), shipped beside the dev pack.
CIRCOR_SAMPLE = Path(os.environ.get("ACULA_CIRCOR_SAMPLE")
                     or Path(__file__).resolve().parents[2] / "shared" / "data" / "circor-sample").expanduser()
# Set by CI (.ci/run): a missing dev pack then fails the session instead of skipping the tests that read it.
REQUIRE_DEV_PACK_ENV = "ACULA_REQUIRE_DEV_PACK"


def dev_pack_is_required() -> bool:
    """Required under CI, and whenever ACULA_DEV_PACK names a folder explicitly (a typo must not skip tests)."""
    required = os.environ.get(REQUIRE_DEV_PACK_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return required or bool(os.environ.get(DEV_PACK_ENV))


def pytest_sessionstart(session):
    if dev_pack_is_required() and not (DEV_PACK / "metadata.csv").is_file():
        pytest.exit(
            f"The dev pack is required ({REQUIRE_DEV_PACK_ENV}={os.environ.get(REQUIRE_DEV_PACK_ENV, '')!r}, "
            f"{DEV_PACK_ENV}={os.environ.get(DEV_PACK_ENV, '')!r}) but {DEV_PACK / 'metadata.csv'} does not exist: "
            f"point {DEV_PACK_ENV} at the auscultation-dev folder.",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    if dev_pack_is_required() and not (CIRCOR_SAMPLE / "training_data.csv").is_file():
        pytest.exit(f"The CirCor sample is required but {CIRCOR_SAMPLE / 'training_data.csv'} does not exist: point "
                    "ACULA_CIRCOR_SAMPLE at the circor-sample folder.", returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.fixture(scope="session")
def dev_pack() -> Path:
    """The dev pack of real recordings ($ACULA_DEV_PACK, else ../shared/data/auscultation-dev); tests that need it
    are skipped where it is absent, unless it is required (see `pytest_sessionstart`)."""
    if not (DEV_PACK / "metadata.csv").is_file():
        pytest.skip(f"dev pack not found at {DEV_PACK} (set {DEV_PACK_ENV}; {REQUIRE_DEV_PACK_ENV}=1 makes this fail)")
    return DEV_PACK


@pytest.fixture(scope="session")
def circor_sample() -> Path:
    """CirCor's official layout with 16 patients ($ACULA_CIRCOR_SAMPLE, else circor-sample beside the dev pack);
    skipped where absent unless the dev pack is required (CI)."""
    if not (CIRCOR_SAMPLE / "training_data.csv").is_file():
        pytest.skip(f"CirCor sample not found at {CIRCOR_SAMPLE} (set ACULA_CIRCOR_SAMPLE)")
    return CIRCOR_SAMPLE
