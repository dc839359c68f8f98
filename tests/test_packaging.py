"""The wheel holds what the installed package reads at run time: built offline from a copy of the sources,
installed into a bare folder, and used from a Python that cannot see the repository."""

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.testing_utils import REPO

# What setup.py builds from (the wheel must not depend on anything else in the repository).
SOURCES = ("setup.py", "pyproject.toml", "README.md", "train_acula.py", "eval_acula.py",
           "modeling_acula", "acula_train", "acula_eval")
# The data files the packages open by path or through importlib.resources.
DATA_FILES = (
    "acula_train/templates/*.md",
    "acula_train/vocab/*.json",
    "acula_eval/metrics/*.py",
)

# Runs in the installed copy: everything must come from `target`, the dependencies from the environment.
USE_THE_INSTALLED_PACKAGE = """
import json, sys
from pathlib import Path

target = Path(sys.argv[1])
import modeling_acula, acula_train, acula_eval, train_acula, eval_acula
from acula_eval.metrics import METRIC_NAMES, METRICS_DIR, load_metric
from acula_train.model_card import DEFAULT_TEMPLATE, render_model_card
from acula_train.report_validation import load_vocabulary
from modeling_acula import AculaConfig

card = render_model_card(repo_id="alice/acula-lung", config=AculaConfig.from_preset("cpu-small"), run={},
                         data_summary={}, teacher_identity={"name": "teacher", "layer": 6})
vocabulary = load_vocabulary()
mae = load_metric("mae").compute(predictions=[1.0, 2.0], references=[1.0, 4.0])
print(json.dumps({
    "files": [m.__file__ for m in (modeling_acula, acula_train, acula_eval, train_acula, eval_acula)],
    "template": str(DEFAULT_TEMPLATE),
    "metrics_dir": str(METRICS_DIR),
    "metric_files": sorted(p.name for p in METRICS_DIR.glob("*.py")),
    "metric_names": list(METRIC_NAMES),
    "card": str(card),
    "sites": len(vocabulary.tables["sites"]),
    "mae": mae,
    "sys_path": sys.path,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in), built from a copy of the sources (a stale `build/` of the
    repository cannot leak into it)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("acula-*.whl")
    target = root / "target"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, target


def test_the_wheel_holds_every_data_file_of_the_source(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for pattern in DATA_FILES:
        expected = {path.relative_to(REPO).as_posix() for path in REPO.glob(pattern)}
        assert expected, f"no file matches {pattern} in the repository"
        assert expected <= names, sorted(expected - names)
    assert not any(name.startswith(("tests/", "benchmarks/", "build/")) for name in names)


def test_the_installed_package_renders_a_card_and_reads_its_vocabulary_and_metrics(installed):
    _, target = installed
    site_packages = [path for path in sys.path if path.endswith("site-packages")]
    # -I -S: no PYTHONPATH, no current folder and no .pth files (the environment's editable install of the
    # repository would otherwise win); sys.path is the standard library, the install folder and the dependencies.
    path_setup = f"import sys; sys.path[:0] = [{str(target)!r}]; sys.path += {site_packages!r}\n"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", path_setup + USE_THE_INSTALLED_PACKAGE, str(target)],
                            capture_output=True, text=True, cwd=target.parent, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.splitlines()[-1])
    assert all(Path(file).is_relative_to(target) for file in facts["files"]), facts["files"]
    # The environment may live inside the repository (.venv): only its site-packages may, nothing else.
    assert not [entry for entry in facts["sys_path"]
                if entry and entry not in site_packages and Path(entry).resolve().is_relative_to(REPO)]
    assert Path(facts["template"]).is_relative_to(target) and Path(facts["metrics_dir"]).is_relative_to(target)
    assert {f"{name}.py" for name in facts["metric_names"]} <= set(facts["metric_files"])
    assert "alice/acula-lung" in facts["card"] and "not-for-diagnosis" in facts["card"]
    assert "{{" not in facts["card"]  # every template variable was filled
    assert facts["sites"] > 0
    assert facts["mae"] == {"mae": 1.0}


# --- the declared dependencies match the imports -----------------------------------------------------------------


def declared_requirements(wheel: Path) -> dict[str, set[str]]:
    """extra -> distribution names of the wheel's Requires-Dist ("" for install_requires)."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    declared: dict[str, set[str]] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = str(requirement.marker or "")  # `extra == "train"` for an extra's requirement
        extra = marker.split("==")[-1].strip().strip("'\"") if marker.startswith("extra") else ""
        declared.setdefault(extra, set()).add(canonicalize_name(requirement.name))
    return declared


def imported_distributions(package: str, module_level_only: bool = False) -> set[str]:
    """The distributions whose modules `package` imports (absolute imports of installed third-party modules)."""
    to_distributions = packages_distributions()
    names = set()
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    names -= {"modeling_acula", "acula_train", "acula_eval"}  # the project itself (installed editable here)
    return {canonicalize_name(dist) for name in names if name in to_distributions for dist in to_distributions[name]}


def test_install_requires_is_the_library_and_the_extras_cover_the_apps(installed):
    wheel, _ = installed
    declared = declared_requirements(wheel)
    library = declared[""]
    assert library == imported_distributions("modeling_acula", module_level_only=True)
    # On-use imports of the library (peft for LoRA) come with the training extra.
    assert imported_distributions("modeling_acula") <= library | declared["train"]
    assert imported_distributions("acula_train") <= library | declared["train"] | declared["teacher"]
    assert imported_distributions("acula_eval") <= library | declared["eval"]
    assert declared["train"] <= declared["eval"]  # the evaluation app builds on the training app
    assert declared["train"] | declared["eval"] | declared["teacher"] <= declared["test"]
