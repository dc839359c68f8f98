"""Tests of the on-disk teacher embedding cache (single process, Accelerator, and 2 real processes)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import acula_train.teacher_cache as cache_module
from acula_train.teacher import AculaTeacher
from acula_train.teacher_cache import INDEX_NAME, LOCK_NAME, TeacherEmbeddingCache, folder_lock

from tests.testing_utils import REPO

WORDS = "patient has a systolic murmur grade iii at left sternal border normal breath sounds wheeze crackles".split()
TEXTS = [
    "systolic murmur grade iii",
    "normal breath sounds",
    "wheeze and crackles at left border",
    "patient has a systolic murmur",
    "normal breath sounds",  # duplicate of texts[1]
]


def _save_tiny_teacher(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 3,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        initializer_range=0.5,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_teacher_path(tmp_path_factory) -> Path:
    return _save_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))


@pytest.fixture(scope="module")
def teacher(tiny_teacher_path) -> AculaTeacher:
    return AculaTeacher.from_pretrained(tiny_teacher_path)


@pytest.fixture
def encoded(teacher, monkeypatch) -> list[str]:
    """Records every text the teacher encodes."""
    seen: list[str] = []
    original = teacher.encode

    def encode(texts, *args, **kwargs):
        seen.extend(texts)
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(teacher, "encode", encode)
    return seen


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _temp_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".tmp")]


def test_second_call_computes_nothing(tmp_path, teacher, encoded):
    cache = TeacherEmbeddingCache(tmp_path / "cache", teacher.identity)
    first = cache.get_or_compute(TEXTS, teacher, batch_size=2, show_progress=False)
    assert first.shape == (5, 16) and first.dtype == torch.float32
    torch.testing.assert_close(first, teacher.encode(TEXTS))
    stats = cache.last_stats
    assert (stats.requested, stats.unique, stats.hits, stats.computed) == (5, 4, 0, 4)
    # Dedupe: each distinct text encoded exactly once.
    assert sorted(encoded[:4]) == sorted(set(TEXTS))
    encoded.clear()

    # A fresh object on the same folder (another run) reads everything back from disk.
    again = TeacherEmbeddingCache(tmp_path / "cache", teacher.identity)
    second = again.get_or_compute(TEXTS, teacher, show_progress=False)
    assert encoded == []
    assert again.last_stats.hits == len(TEXTS) and again.last_stats.computed == 0
    assert torch.equal(first, second)
    assert torch.equal(again.lookup(TEXTS[::-1]), first.flip(0))
    assert len(again) == 4 and TEXTS[0] in again and "murmur" not in again


def test_only_missing_texts_are_computed(tmp_path, teacher, encoded):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    cache.get_or_compute(TEXTS[:2], teacher, show_progress=False)
    encoded.clear()
    result = cache.get_or_compute(TEXTS, teacher, show_progress=False)
    assert sorted(encoded) == sorted([TEXTS[2], TEXTS[3]])
    stats = cache.last_stats
    assert (stats.hits, stats.computed) == (3, 2)  # texts[0], texts[1] and its duplicate texts[4]
    torch.testing.assert_close(result, teacher.encode(TEXTS))
    assert cache.folder.parent == tmp_path and cache.index_path == cache.folder / INDEX_NAME
    index = json.loads(cache.index_path.read_text())
    assert len(index["entries"]) == 4
    assert len({shard for shard, _ in index["entries"].values()}) == 2
    assert index["identity"] == teacher.identity


def test_lookup_missing_names_indices(tmp_path, teacher):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    cache.get_or_compute(TEXTS[:2], teacher, show_progress=False)
    with pytest.raises(KeyError, match=r"2 texts are not in the teacher cache.*indices \[1, 2\]"):
        cache.lookup([TEXTS[0], TEXTS[2], TEXTS[3]])


def test_empty_text_refused(tmp_path, teacher, encoded):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        cache.get_or_compute([TEXTS[0], "   "], teacher, show_progress=False)
    assert encoded == [] and not cache.index_path.exists()


def test_other_identities_coexist_in_one_root(tmp_path, teacher, tiny_teacher_path, encoded):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    first = cache.get_or_compute(TEXTS, teacher, show_progress=False)

    # Another layer / pooling / max_length in the same root: its own sub-folder, never mixed.
    layer0 = AculaTeacher(teacher.model, teacher.tokenizer, name_or_path=str(tiny_teacher_path), layer=0)
    other = TeacherEmbeddingCache(tmp_path, layer0.identity)
    assert other.folder != cache.folder and other.folder.parent == tmp_path and len(other) == 0
    encoded.clear()
    vectors = other.get_or_compute(TEXTS, layer0, show_progress=False)
    assert other.last_stats.computed == 4
    torch.testing.assert_close(vectors, layer0.encode(TEXTS))
    assert not torch.allclose(vectors, first)
    # Both stay usable, and reopening finds each one's entries.
    assert torch.equal(TeacherEmbeddingCache(tmp_path, teacher.identity).lookup(TEXTS), first)
    assert torch.equal(TeacherEmbeddingCache(tmp_path, layer0.identity).lookup(TEXTS), vectors)
    shorter = dict(teacher.identity, max_length=8)
    assert TeacherEmbeddingCache(tmp_path, shorter).folder not in (cache.folder, other.folder)

    # A teacher that does not match the cache it is used with is refused.
    last_teacher = AculaTeacher(teacher.model, teacher.tokenizer, name_or_path=str(tiny_teacher_path), pooling="last")
    with pytest.raises(ValueError, match="pooling: cache 'mean' != teacher 'last'"):
        cache.get_or_compute(TEXTS, last_teacher, show_progress=False)
    changed = dict(teacher.identity, layer=1, pooling="last")
    with pytest.raises(ValueError, match=r"layer: cache -1 != teacher 1; pooling: cache 'mean' != teacher 'last'"):
        cache._check_identity(cache.identity, changed, "cache")

    # Keys depend on the identity: the same text under another identity is another entry.
    assert other.key(TEXTS[0]) != cache.key(TEXTS[0])
    with pytest.raises(ValueError, match="lacks the fields"):
        TeacherEmbeddingCache(tmp_path / "incomplete", {"name_or_path": "x"})


def _hub_identity(teacher: AculaTeacher, **changes) -> dict:
    """The identity of a teacher as if loaded from the Hub (no content hash)."""
    return dict(teacher.identity, name_or_path="org/tiny", content_hash=None, **changes)


def test_commit_hash_of_hub_teacher(tmp_path, teacher):
    with_a = TeacherEmbeddingCache(tmp_path, _hub_identity(teacher, commit_hash="a" * 40))
    with_b = TeacherEmbeddingCache(tmp_path, _hub_identity(teacher, commit_hash="b" * 40))
    unknown = TeacherEmbeddingCache(tmp_path, _hub_identity(teacher, commit_hash=None))
    assert len({with_a.folder, with_b.folder, unknown.folder}) == 3  # another commit is another identity
    # Keys of a Hub teacher do not depend on the commit (as before sub-folders existed).
    assert with_a.key(TEXTS[0]) == with_b.key(TEXTS[0]) == unknown.key(TEXTS[0])
    with pytest.raises(ValueError, match="commit_hash"):
        with_a._check_identity(with_a.identity, with_b.identity, "cache")
    with_a._check_identity(with_a.identity, unknown.identity, "cache")  # unknown: accepted


def test_local_folder_teacher_identified_by_its_files(tmp_path, teacher, tiny_teacher_path):
    folder = shutil.copytree(tiny_teacher_path, tmp_path / "teacher")
    first_teacher = AculaTeacher.from_pretrained(folder)
    assert first_teacher.identity["content_hash"] == teacher.identity["content_hash"]
    root = tmp_path / "cache"
    old = TeacherEmbeddingCache(root, first_teacher.identity).get_or_compute(TEXTS, first_teacher, show_progress=False)

    # New weights in the same folder: a new identity, so nothing stale is served.
    shutil.rmtree(folder)
    _save_tiny_teacher(folder, seed=1)
    retrained = AculaTeacher.from_pretrained(folder)
    assert retrained.identity["name_or_path"] == first_teacher.identity["name_or_path"]
    assert retrained.identity["content_hash"] != first_teacher.identity["content_hash"]
    cache = TeacherEmbeddingCache(root, retrained.identity)
    served = cache.get_or_compute(TEXTS, retrained, show_progress=False)
    assert cache.last_stats.hits == 0 and cache.last_stats.computed == 4
    torch.testing.assert_close(served, retrained.encode(TEXTS))
    assert not torch.allclose(served, old)

    # The first weights at another path: the same identity, everything is read back.
    moved = AculaTeacher.from_pretrained(shutil.copytree(tiny_teacher_path, tmp_path / "elsewhere" / "teacher"))
    assert moved.identity["name_or_path"] != first_teacher.identity["name_or_path"]
    reused = TeacherEmbeddingCache(root, moved.identity)
    assert torch.equal(reused.get_or_compute(TEXTS, moved, show_progress=False), old)
    assert reused.last_stats.computed == 0 and reused.last_stats.hits == len(TEXTS)


def test_old_layout_root_is_read_when_its_identity_matches(tmp_path, teacher, monkeypatch, caplog):
    hub_teacher = AculaTeacher(teacher.model, teacher.tokenizer, name_or_path="org/tiny")  # not a folder
    identity = hub_teacher.identity
    assert identity == _hub_identity(teacher)
    first = TeacherEmbeddingCache(tmp_path / "build", identity).get_or_compute(TEXTS, hub_teacher, show_progress=False)
    # An old-layout cache: index and shards directly in the root.
    built = TeacherEmbeddingCache(tmp_path / "build", identity).folder
    legacy_root = tmp_path / "legacy"
    shutil.copytree(built, legacy_root)
    legacy = TeacherEmbeddingCache(legacy_root, identity)
    assert legacy.folder == legacy_root and len(legacy) == 4
    monkeypatch.setattr(hub_teacher, "encode", lambda *args, **kwargs: pytest.fail("encoded a cached text"))
    assert torch.equal(legacy.get_or_compute(TEXTS, hub_teacher, show_progress=False), first)

    # Another identity ignores it (with a note) and gets its own sub-folder.
    with caplog.at_level(logging.INFO, logger="acula_train.teacher_cache"):
        other = TeacherEmbeddingCache(legacy_root, dict(identity, pooling="last"))
    assert other.folder.parent == legacy_root and len(other) == 0
    assert "holds another teacher (pooling)" in caplog.text


def test_two_runs_sharing_a_folder_keep_each_others_entries(tmp_path, teacher):
    run_a = TeacherEmbeddingCache(tmp_path, teacher.identity)
    run_b = TeacherEmbeddingCache(tmp_path, teacher.identity)  # opened before run A wrote anything
    vector_a = run_a.get_or_compute([TEXTS[0]], teacher, show_progress=False)
    vector_b = run_b.get_or_compute([TEXTS[1]], teacher, show_progress=False)
    reopened = TeacherEmbeddingCache(tmp_path, teacher.identity)
    assert len(reopened) == 2 and TEXTS[0] in reopened and TEXTS[1] in reopened
    assert torch.equal(reopened.lookup(TEXTS[:2]), torch.cat([vector_a, vector_b]))
    assert torch.equal(run_a.lookup([TEXTS[1]]), vector_b)  # a reader sees entries added by another run


def test_run_merging_while_another_run_merges(tmp_path, teacher):
    """Run B writes its index right after run A's, before A re-reads it (in DDP: between rank 0's merge
    and the barrier): neither loses the other's entries and A does not crash."""
    run_a = TeacherEmbeddingCache(tmp_path, teacher.identity)
    run_b = TeacherEmbeddingCache(tmp_path, teacher.identity)
    original = run_a._write_index

    def write_then_other_run_merges():
        original()
        run_b.get_or_compute([TEXTS[1]], teacher, show_progress=False)

    run_a._write_index = write_then_other_run_merges
    result = run_a.get_or_compute([TEXTS[0]], teacher, show_progress=False)
    torch.testing.assert_close(result, teacher.encode([TEXTS[0]]))
    reopened = TeacherEmbeddingCache(tmp_path, teacher.identity)
    assert TEXTS[0] in reopened and TEXTS[1] in reopened


def test_index_is_written_under_an_exclusive_file_lock(tmp_path, teacher):
    fcntl = pytest.importorskip("fcntl")  # another process's view, through flock (what filelock uses on Unix)
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    original = cache._write_index
    observed = []

    def write_index():
        with open(cache.folder / LOCK_NAME, "a") as other_handle:  # what another process would do
            try:
                fcntl.flock(other_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                observed.append("free")
                fcntl.flock(other_handle, fcntl.LOCK_UN)
            except BlockingIOError:
                observed.append("held")
        original()

    cache._write_index = write_index
    cache.get_or_compute(TEXTS[:2], teacher, show_progress=False)
    assert observed == ["held"]
    with open(cache.folder / LOCK_NAME, "a") as handle:  # released afterwards
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_folder_lock_serialises_threads_and_is_reentrant_within_one(tmp_path):
    events = []

    def hold(name: str) -> None:
        with folder_lock(tmp_path):
            with folder_lock(tmp_path / "."):  # the same folder spelled otherwise, nested: no deadlock
                events.append(("in", name))
                time.sleep(0.2)
                events.append(("out", name))

    threads = [threading.Thread(target=hold, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(events) == 6
    for first, second in zip(events[::2], events[1::2]):  # never two holders at once
        assert first[0] == "in" and second == ("out", first[1]), events


def test_folder_lock_serialises_processes_and_a_dead_holder_releases_it(tmp_path):
    holder = textwrap.dedent("""
        import os, sys, time
        from pathlib import Path
        from acula_train.teacher_cache import folder_lock
        folder = Path(sys.argv[1])
        with folder_lock(folder):
            (folder / "held").touch()
            time.sleep(1.0)
            (folder / "done").touch()
            os._exit(0)  # dies holding the lock: the OS must release it
    """)
    process = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not (tmp_path / "held").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    lock = folder_lock(tmp_path)
    assert lock.acquire(timeout=60)
    try:
        assert (tmp_path / "done").exists()  # this process waited for the holder
    finally:
        lock.release()
    assert process.wait(timeout=60) == 0


class _FakeTeacher:
    """Deterministic vectors without a model, so that forked processes stay light."""

    def __init__(self, identity: dict) -> None:
        self.identity = identity
        self.last_truncated = 0

    def encode(self, texts, batch_size=32, show_progress=False):
        return torch.tensor([[float(len(text)), float(sum(map(ord, text))), 0.0, 1.0] for text in texts])


def _merge_many(folder: str, identity: dict, worker: int, rounds: int) -> None:
    teacher = _FakeTeacher(identity)
    cache = TeacherEmbeddingCache(folder, identity)  # opened once, like a long run
    for round_index in range(rounds):
        texts = [f"worker {worker} round {round_index} text {row}" for row in range(2)]
        result = cache.get_or_compute(texts, teacher, show_progress=False)
        assert torch.equal(result, teacher.encode(texts))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_processes_lose_no_index_entries(tmp_path):
    identity = {field: None for field in cache_module.IDENTITY_FIELDS} | {"name_or_path": "x", "hidden_size": 4}
    identity["commit_hash"] = identity["content_hash"] = None
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_merge_many, args=(str(tmp_path), identity, worker, 15)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [process.exitcode for process in workers] == [0, 0, 0, 0]
    cache = TeacherEmbeddingCache(tmp_path, identity)
    assert len(cache) == 4 * 15 * 2  # every run's entries survived the others' merges
    assert _temp_files(cache.folder) == []


def test_truncated_texts_are_counted(tmp_path, tiny_teacher_path):
    short_teacher = AculaTeacher.from_pretrained(tiny_teacher_path, max_length=4)
    cache = TeacherEmbeddingCache(tmp_path, short_teacher.identity)
    cache.get_or_compute(TEXTS, short_teacher, show_progress=False)
    # "systolic murmur grade iii", "wheeze and crackles at left border", "patient has a systolic murmur"
    assert cache.last_stats.truncated == 2 and cache.last_stats.computed == 4
    cache.get_or_compute(TEXTS, short_teacher, show_progress=False)
    assert cache.last_stats.truncated == 0  # nothing encoded the second time


def test_crash_while_writing_leaves_cache_intact(tmp_path, teacher, monkeypatch):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    first = cache.get_or_compute(TEXTS[:2], teacher, show_progress=False)
    folder = cache.folder
    index_before = cache.index_path.read_bytes()
    shards_before = sorted(os.listdir(folder))

    def broken_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a shard")
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "save_file", broken_save_file)
        with pytest.raises(RuntimeError, match="disk full"):
            cache.get_or_compute(TEXTS, teacher, show_progress=False)
    assert sorted(os.listdir(folder)) == shards_before
    assert cache.index_path.read_bytes() == index_before

    def broken_fsync(fd):
        raise OSError("crash while writing the index")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module.os, "fsync", broken_fsync)
        with pytest.raises(OSError, match="crash while writing"):
            cache.get_or_compute(TEXTS, teacher, show_progress=False)
    assert _temp_files(folder) == []
    assert cache.index_path.read_bytes() == index_before  # the old index, still valid

    # The cache still works after both crashes.
    reopened = TeacherEmbeddingCache(tmp_path, teacher.identity)
    assert torch.equal(reopened.lookup(TEXTS[:2]), first)
    result = reopened.get_or_compute(TEXTS, teacher, show_progress=False)
    torch.testing.assert_close(result, teacher.encode(TEXTS))
    assert _temp_files(folder) == []


def test_single_process_accelerator(tmp_path, teacher, encoded):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        accelerator = Accelerator(cpu=True)
        cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
        result = cache.get_or_compute(TEXTS, teacher, accelerator=accelerator, show_progress=False)
        assert cache.last_stats.computed == 4 and len(encoded) == 4
        torch.testing.assert_close(result, teacher.encode(TEXTS))
        assert sorted(name for name in os.listdir(cache.folder) if name.endswith(".safetensors"))[0].endswith(
            "-p0of1.safetensors"
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from accelerate import PartialState
    from safetensors.torch import save_file
    from acula_train.teacher import AculaTeacher
    from acula_train.teacher_cache import TeacherEmbeddingCache

    teacher_path, cache_folder, out_folder = sys.argv[1:4]
    texts = sys.argv[4:]
    state = PartialState(cpu=True)
    teacher = AculaTeacher.from_pretrained(teacher_path)
    seen = []
    original = teacher.encode
    teacher.encode = lambda batch, **kwargs: (seen.extend(batch), original(batch, **kwargs))[1]
    cache = TeacherEmbeddingCache(cache_folder, teacher.identity)
    result = cache.get_or_compute(texts, teacher, accelerator=state, show_progress=False)
    stats = cache.last_stats
    save_file(
        {"result": result, "stats": torch.tensor([stats.hits, stats.computed, len(seen)])},
        f"{out_folder}/rank{state.process_index}.safetensors",
    )
    """
)


@pytest.mark.slow
def test_two_processes_split_the_work(tmp_path, teacher, tiny_teacher_path):
    from safetensors.torch import load_file

    script = tmp_path / "two_process.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    cache_folder = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(script), str(tiny_teacher_path), str(cache_folder), str(tmp_path), *TEXTS,
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]

    expected = teacher.encode(TEXTS)
    outputs = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(2)]
    for output in outputs:
        torch.testing.assert_close(output["result"], expected)
        assert output["stats"][:2].tolist() == [0, 4]  # stats count all processes' work
    assert sorted(int(output["stats"][2]) for output in outputs) == [2, 2]  # each process encoded half
    identity_folder = TeacherEmbeddingCache(cache_folder, teacher.identity).folder
    shards = sorted(name for name in os.listdir(identity_folder) if name.endswith(".safetensors"))
    assert len(shards) == 2 and shards[0].endswith("-p0of2.safetensors") and shards[1].endswith("-p1of2.safetensors")
    assert _temp_files(identity_folder) == []
    # A later single-process run finds everything.
    assert torch.equal(TeacherEmbeddingCache(cache_folder, teacher.identity).lookup(TEXTS), outputs[0]["result"])
