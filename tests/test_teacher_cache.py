"""Tests of the on-disk teacher embedding cache (single process, Accelerator, and 2 real processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import modeling_acula.teacher_cache as cache_module
from modeling_acula.teacher import AculaTeacher
from modeling_acula.teacher_cache import INDEX_NAME, TeacherEmbeddingCache

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = "patient has a systolic murmur grade iii at left sternal border normal breath sounds wheeze crackles".split()
TEXTS = [
    "systolic murmur grade iii",
    "normal breath sounds",
    "wheeze and crackles at left border",
    "patient has a systolic murmur",
    "normal breath sounds",  # duplicate of texts[1]
]


@pytest.fixture(scope="module")
def tiny_teacher_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-teacher")
    torch.manual_seed(0)
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
    index = json.loads((tmp_path / INDEX_NAME).read_text())
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
    assert encoded == [] and not (tmp_path / INDEX_NAME).exists()


def test_other_identity_refused(tmp_path, teacher, tiny_teacher_path):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    cache.get_or_compute(TEXTS, teacher, show_progress=False)

    other = dict(teacher.identity, layer=1, pooling="last")
    with pytest.raises(ValueError, match=r"layer: cache -1 != teacher 1; pooling: cache 'mean' != teacher 'last'.*new cache folder"):
        TeacherEmbeddingCache(tmp_path, other)

    # A teacher that does not match the cache it is used with is refused too.
    last_teacher = AculaTeacher(teacher.model, teacher.tokenizer, name_or_path=str(tiny_teacher_path), pooling="last")
    with pytest.raises(ValueError, match="pooling: cache 'mean' != teacher 'last'"):
        cache.get_or_compute(TEXTS, last_teacher, show_progress=False)

    # Keys depend on the identity: the same text under another identity is another entry.
    assert TeacherEmbeddingCache(tmp_path / "other", other).key(TEXTS[0]) != cache.key(TEXTS[0])
    with pytest.raises(ValueError, match="lacks the fields"):
        TeacherEmbeddingCache(tmp_path / "incomplete", {"name_or_path": "x"})


def test_commit_hash_only_compared_when_known(tmp_path, teacher):
    TeacherEmbeddingCache(tmp_path, dict(teacher.identity, commit_hash="a" * 40))._write_index()
    TeacherEmbeddingCache(tmp_path, dict(teacher.identity, commit_hash=None))  # unknown: accepted
    with pytest.raises(ValueError, match="commit_hash"):
        TeacherEmbeddingCache(tmp_path, dict(teacher.identity, commit_hash="b" * 40))


def test_crash_while_writing_leaves_cache_intact(tmp_path, teacher, monkeypatch):
    cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
    first = cache.get_or_compute(TEXTS[:2], teacher, show_progress=False)
    index_before = (tmp_path / INDEX_NAME).read_bytes()
    shards_before = sorted(os.listdir(tmp_path))

    def broken_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a shard")
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "save_file", broken_save_file)
        with pytest.raises(RuntimeError, match="disk full"):
            cache.get_or_compute(TEXTS, teacher, show_progress=False)
    assert sorted(os.listdir(tmp_path)) == shards_before
    assert (tmp_path / INDEX_NAME).read_bytes() == index_before

    def broken_fsync(fd):
        raise OSError("crash while writing the index")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module.os, "fsync", broken_fsync)
        with pytest.raises(OSError, match="crash while writing"):
            cache.get_or_compute(TEXTS, teacher, show_progress=False)
    assert _temp_files(tmp_path) == []
    assert (tmp_path / INDEX_NAME).read_bytes() == index_before  # the old index, still valid

    # The cache still works after both crashes.
    reopened = TeacherEmbeddingCache(tmp_path, teacher.identity)
    assert torch.equal(reopened.lookup(TEXTS[:2]), first)
    result = reopened.get_or_compute(TEXTS, teacher, show_progress=False)
    torch.testing.assert_close(result, teacher.encode(TEXTS))
    assert _temp_files(tmp_path) == []


def test_single_process_accelerator(tmp_path, teacher, encoded):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        accelerator = Accelerator(cpu=True)
        cache = TeacherEmbeddingCache(tmp_path, teacher.identity)
        result = cache.get_or_compute(TEXTS, teacher, accelerator=accelerator, show_progress=False)
        assert cache.last_stats.computed == 4 and len(encoded) == 4
        torch.testing.assert_close(result, teacher.encode(TEXTS))
        assert sorted(name for name in os.listdir(tmp_path) if name.endswith(".safetensors"))[0].endswith(
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
    from modeling_acula.teacher import AculaTeacher
    from modeling_acula.teacher_cache import TeacherEmbeddingCache

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
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
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
    shards = sorted(name for name in os.listdir(cache_folder) if name.endswith(".safetensors"))
    assert len(shards) == 2 and shards[0].endswith("-p0of2.safetensors") and shards[1].endswith("-p1of2.safetensors")
    assert _temp_files(cache_folder) == []
    # A later single-process run finds everything.
    assert torch.equal(TeacherEmbeddingCache(cache_folder, teacher.identity).lookup(TEXTS), outputs[0]["result"])
