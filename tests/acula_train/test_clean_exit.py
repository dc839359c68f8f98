"""A run ends everything it started, on every path: no rank outlives its job, and no thread or process group is
left behind by a success, an error or Ctrl-C (see `acula_train/teardown.py` for why the order matters)."""

import csv
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from acula_train.trainer import AlignmentTrainer
from tests.testing_utils import REPO, run_in_process, tiny_args

MINI_PACK = REPO / "data" / "auscultation-mini" / "metadata.csv"
# How long a rank may live after its run has returned (or raised): interpreter exit on a busy 2-core machine took
# 2-7 s when measured; a rank left asleep in teardown never ends.
EXIT_GRACE_S = 30
JOB_TIMEOUT_S = 240


def gloo_threads() -> list[str]:
    """Names of this process's native gloo / TCPStore threads (Linux; elsewhere none are seen)."""
    names = []
    for path in glob.glob("/proc/self/task/*/comm"):
        try:
            name = Path(path).read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if "gloo" in name or "tcpstore" in name:
            names.append(name)
    return sorted(names)


def non_daemon_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread())


# --- two real processes, several jobs in a row ----------------------------------------------------------------

# Each rank records, once its run has returned or raised, its pid, the time and what it still holds.
LAUNCHER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from tests.acula_train.test_clean_exit import gloo_threads, install_failure, non_daemon_threads
install_failure(os.environ.get("ACULA_TEST_FAIL_AT"))
import torch
import train_acula
try:
    train_acula.main()
finally:
    record = {{"pid": os.getpid(), "done": time.time(), "gloo_threads": gloo_threads(),
               "non_daemon_threads": non_daemon_threads(),
               "process_group": torch.distributed.is_available() and torch.distributed.is_initialized()}}
    with open(os.path.join(os.environ["ACULA_TEST_RECORDS"], "rank" + os.environ["RANK"] + ".json"), "w") as handle:
        json.dump(record, handle)
"""


def install_failure(fail_at: str | None) -> None:
    """`rank:step`: that rank raises ValueError after optimiser step `step` (its peer is then left mid-collective)."""
    if not fail_at:
        return
    rank, step = (int(part) for part in fail_at.split(":"))
    step_once = AlignmentTrainer.training_step

    def training_step(self, window, epoch, micro_step):
        result = step_once(self, window, epoch, micro_step)
        if self.accelerator.process_index == rank and self.state["global_step"] == step:
            raise ValueError("injected failure")
        return result

    AlignmentTrainer.training_step = training_step


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by a launcher that has ended counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _launch(args: list[str], records: Path, launcher: Path, fail_at: str = "") -> tuple[int, float, str]:
    """One 2-process gloo job (its own process group, so a hung one can be killed whole); returns its exit code,
    when the launcher returned, and its output."""
    records.mkdir()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true",
                   "ACULA_TEST_RECORDS": str(records), "ACULA_TEST_FAIL_AT": fail_at}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(_free_port()), str(launcher), *args]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
                           cwd=REPO, start_new_session=True)
    try:
        output, _ = job.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        done = sorted(path.name for path in records.glob("rank*.json"))
        pytest.fail(f"the 2-process job did not end within {JOB_TIMEOUT_S} s (ranks done: {done}):\n{output[-4000:]}")
    return job.returncode, time.time(), output


@pytest.mark.slow
def test_two_process_jobs_end_with_their_ranks(tmp_path):
    """Three jobs in a row (two that succeed, one whose rank 1 fails mid-run): every rank ends its process group and
    threads, and has exited within seconds of its run's end, and the launcher returns with it."""
    launcher = tmp_path / "recorded_train_acula.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    common = ["--max_steps", "2", "--checkpointing_steps", "0", "--per_device_train_batch_size", "4"]
    for attempt, fail_at in enumerate(["", "", "1:1"]):
        records = tmp_path / f"records{attempt}"
        code, returned, output = _launch(tiny_args(tmp_path / f"out{attempt}", tmp_path / "cache", *common),
                                         records, launcher, fail_at)
        assert code == (1 if fail_at else 0), output[-4000:]
        if fail_at:
            assert "injected failure" in output
        ranks = [json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1)]
        for rank, record in enumerate(ranks):
            assert record["gloo_threads"] == [] and record["non_daemon_threads"] == [], (attempt, rank, record)
            assert record["process_group"] is False, (attempt, rank, record)
        # the launcher waits for its ranks: it returns within the grace of the last one's end, and none is left
        last_done = max(record["done"] for record in ranks)
        assert returned - last_done < EXIT_GRACE_S, (attempt, returned - last_done, output[-4000:])
        assert not [record["pid"] for record in ranks if _alive(record["pid"])], attempt


# --- one process, the error paths --------------------------------------------------------------------------------


@pytest.fixture
def one_process_group(monkeypatch):
    """Accelerate in its distributed CPU mode with one process: a real gloo process group and a DDP-wrapped model,
    as each rank of `accelerate launch --multi_gpu` has."""
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "ACCELERATE_USE_CPU": "true",
                        "OMP_NUM_THREADS": str(torch.get_num_threads())}.items():
        monkeypatch.setenv(name, value)
    before = set(non_daemon_threads())
    yield
    assert not torch.distributed.is_initialized()
    assert gloo_threads() == []
    assert set(non_daemon_threads()) <= before


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Spectrograms and teacher vectors, computed once for the module's runs."""
    return tmp_path_factory.mktemp("cache")


def _rows(tmp_path: Path, count: int = 40) -> list[dict]:
    with open(MINI_PACK, newline="", encoding="utf-8") as handle:
        records = [row for row in csv.DictReader(handle) if row["suggested_split"] == "train"][:count]
    for row in records:
        row["file"] = str(MINI_PACK.parent / row["file"])
    return records


def _write_manifest(path: Path, records: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


@pytest.mark.parametrize("failure", ["corrupt file", "featurisation"])
def test_a_failure_while_decoding_leaves_no_decoding_thread(tmp_path, cache, monkeypatch, one_process_group, failure):
    """A corrupt file fails inside the decoding threads; a featurisation error fails in the caller while the next
    batch is being decoded. Either way the pool is gone, even while the exception (and its traceback) is still held,
    as train_acula.py's error handler holds it until the process exits."""
    rows = _rows(tmp_path)
    if failure == "corrupt file":
        full = tmp_path / "full.flac"
        soundfile.write(full, np.sin(np.arange(3 * 16000) / 20).astype(np.float32) * 0.3, 16000)
        (tmp_path / "cut.flac").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        rows[36]["file"] = str(tmp_path / "cut.flac")  # in the second batch, after one that succeeds
        message = "cut.flac"
    else:
        from modeling_acula import AculaFeatureExtractor

        def failing_call(self, *args, **kwargs):  # the first batch (of 32), while the next one is being decoded
            raise RuntimeError("injected featurisation failure")

        monkeypatch.setattr(AculaFeatureExtractor, "__call__", failing_call)
        message = "injected featurisation failure"
    manifest = _write_manifest(tmp_path / "m.csv", rows)
    with pytest.raises((ValueError, RuntimeError), match=message) as raised:
        run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--manifest", str(manifest),
                                 "--split_column", "suggested_split", "--max_steps", "1", "--decode_workers", "2"))
    assert raised.value.__traceback__ is not None
    assert not [t.name for t in threading.enumerate() if t.name.startswith("acula-decode")]
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_an_error_mid_training_ends_the_threads_and_the_process_group(tmp_path, cache, monkeypatch,
                                                                       one_process_group, error):
    from acula_train import trainer as trainer_module

    backward, calls, seen = trainer_module.backward_over_window, [], {}

    def failing_backward(model, *args, **kwargs):
        # A failure inside the step, in a frame that holds the DDP wrapper (as a real one in the forward or backward
        # pass would), after the first steps' all-reduces and all-gathers have run.
        result = backward(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            seen["wrapped"] = type(model).__name__
            raise error("injected")
        return result

    monkeypatch.setattr(trainer_module, "backward_over_window", failing_backward)
    with pytest.raises(error, match="injected") as raised:
        run_in_process(tiny_args(tmp_path / "out", cache, "--max_steps", "4",
                                 "--checkpointing_steps", "0", "--per_device_train_batch_size", "4"))
    assert seen["wrapped"] == "DistributedDataParallel"  # the case that matters: the wrapper held the group
    # Checked while the exception and its traceback are still held (train_acula.py's handler holds them until the
    # process exits): nothing may wait for them to go.
    assert raised.value.__traceback__ is not None
    assert not torch.distributed.is_initialized()
    assert gloo_threads() == []
    assert non_daemon_threads() == []
