"""train_acula.py end to end on the shipped recordings: outputs, caches, 2-process DDP, kill and resume."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel

import train_acula
from modeling_acula import AculaForPreTraining, AculaModel
from acula_train import output_folder
from acula_train.arguments import DEFAULT_WHISPER_WINDOW_SECONDS, DataArguments
from acula_train.teacher import AculaTeacher
from acula_train.trainer import AlignmentTrainer

from tests.testing_utils import (
    REPO,
    read_log,
    run_in_process,
    run_script,
    tiny_args,
    tiny_start,
    tiny_whisper_config,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short LoRA run on the 48 training recordings of the shipped pack."""
    root = tmp_path_factory.mktemp("train")
    output = run_in_process(tiny_args(root / "out", root / "cache", "--max_steps", "4", "--checkpointing_steps", "2"))
    return output, root


def test_output_folder_loads_with_auto_classes(trained):
    output, _ = trained
    model = AutoModel.from_pretrained(output).eval()
    extractor = AutoFeatureExtractor.from_pretrained(output)
    assert type(model) is AculaModel
    alignment = AculaForPreTraining.from_pretrained(output / "alignment").eval()
    inputs = extractor([torch.randn(16000 * 3).numpy()], sampling_rate=16000, return_tensors="pt")
    # the top-level encoder is the merged LoRA encoder of the alignment model
    torch.testing.assert_close(model(**inputs).pooler_output, alignment.acula(**inputs).pooler_output)
    adapter = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8


def test_output_records_data_teacher_and_card(trained):
    output, _ = trained
    summary = json.loads((output / "data_summary.json").read_text())
    assert summary["rows_in_manifest"] == 56 and summary["rows_used"] == 48
    assert summary["leakage"]["removed"] == {"split": 8}
    assert set(summary["sources"]) == {"KAUH_lung_sounds", "Coswara_20200413"} and summary["all_cc_by_4"]
    reports = [json.loads(line) for line in (output / "reports.jsonl").read_text().splitlines()]
    assert len(reports) == 48 and all(r["report"].strip() for r in reports)
    teacher = json.loads((output / "teacher.json").read_text())
    assert teacher["hidden_size"] == 384 and teacher["pooling"] == "mean"
    config = json.loads((output / "config.json").read_text())
    assert config["teacher_hidden_size"] == 384 and config["model_type"] == "acula"
    args = json.loads((output / "training_args.json").read_text())
    assert args["training"]["max_steps"] == 4
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert "not-for-diagnosis" in metadata["tags"] and metadata["license"] == "cc-by-4.0"
    assert "Not for diagnosis" in card and "KAUH_lung_sounds" in card and "all-MiniLM-L6-v2" in card
    log = read_log(output)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in os.listdir(output))


def test_checkpoints_are_safetensors_and_json(trained):
    output, _ = trained
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002"]  # step 4 is the end of the run: the output folder, not a checkpoint
    assert {p.name for p in (output / "checkpoints" / "step-00000002").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "trainer_state.json"}
    # AdamW decays weight matrices only: biases and norms (and InfoNCE's logit_scale) form a group without decay
    state = json.loads((output / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert [group["weight_decay"] for group in groups] == [0.01, 0.0] and all(group["params"] for group in groups)
    assert state["run_config"]["weight_decay_exempt"] == "biases, norms, logit_scale"


def test_push_to_hub_uploads_exactly_the_model_files(trained):
    output, _ = trained
    files = output_folder.upload_file_list(output)
    expected = {
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "configuration_acula.py",
        "modeling_acula.py", "losses.py", "feature_extraction_acula.py", "training_args.json", "teacher.json",
        "audio_utils.py",  # imported by the feature extractor's code, so saved beside it for remote-code loading
        "data_summary.json", "reports.jsonl", "skipped_rows.jsonl", "adapter/README.md", "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors", "alignment/config.json", "alignment/model.safetensors",
        "alignment/configuration_acula.py", "alignment/modeling_acula.py", "alignment/losses.py",
        "alignment/readout.json", "alignment/readout.safetensors",  # the zero-shot / retrieval readout (CKA heads)
        "aligned_recordings.jsonl",  # content hashes of the aligned recordings: the evaluator's leakage check
    }
    assert set(files) == expected
    adapter_card = (output / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in adapter_card and "a local checkpoint (`tiny-start`)" in adapter_card
    assert json.loads((output / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def machine_paths_in_upload(output: Path, folders) -> list[str]:
    """`file: folder` for every uploaded file (bytes, safetensors included) that holds one of these absolute paths."""
    found = []
    for name in output_folder.upload_file_list(output):
        data = (output / name).read_bytes()
        found += [f"{name}: {folder}" for folder in map(str, folders) if folder.encode() in data]
    return found


def test_uploaded_files_name_no_path_of_the_training_machine(tmp_path):
    import csv

    import numpy as np
    import soundfile as sf

    from acula_eval.baselines import recorded_start
    from modeling_acula.file_utils import file_sha256

    # The shipped pack copied to a distinctive folder, with a silent recording (skipped_rows.jsonl) and an --exclude
    # list in a folder of its own (data_summary.json); the start is a sibling of the output folder.
    pack = tmp_path / "machine-data" / "auscultation-mini"
    shutil.copytree(REPO / "data" / "auscultation-mini", pack)
    rows = list(csv.DictReader(open(pack / "metadata.csv", encoding="utf-8")))
    sf.write(pack / "audio" / "silent.flac", np.zeros(16000 * 5, dtype=np.float32), 16000)
    rows.append(dict(rows[0], file="audio/silent.flac", group_id="silent-1", suggested_split="train"))
    with open(pack / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    excluded = next(row for row in rows if row["suggested_split"] == "train")
    holdout = tmp_path / "holdout-lists" / "holdout.csv"
    holdout.parent.mkdir()
    holdout.write_text(f"file\n{pack / excluded['file']}\n", encoding="utf-8")
    start = tmp_path / "tiny-start"
    shutil.copytree(tiny_start(), start)
    args = tiny_args(tmp_path / "machine-out", tmp_path / "machine-cache", "--manifest", str(pack / "metadata.csv"),
                     "--split_column", "suggested_split", "--exclude", str(holdout), "--max_steps", "1",
                     "--checkpointing_steps", "0")
    args[args.index("--init_from") + 1] = str(start)
    output = run_in_process(args)

    machine = [output, pack, holdout.parent, start, tmp_path / "machine-cache", tmp_path, tiny_start().parent,
               Path.home(), REPO, Path(sys.prefix)]
    assert machine_paths_in_upload(output, machine) == []
    files = output_folder.upload_file_list(output)
    assert "aligned_recordings.jsonl" in files and not any(name.startswith(".") for name in files)

    # Recordings by their path relative to the manifest, the manifest and the exclude list by file name.
    summary = json.loads((output / "data_summary.json").read_text())
    assert summary["manifest"] == "metadata.csv" and summary["leakage"]["exclude_sources"] == ["holdout.csv"]
    assert summary["rows_used"] == 47 and summary["leakage"]["counts"]["recording"] == 1
    args = json.loads((output / "training_args.json").read_text())
    assert args["data"]["manifest"] == "metadata.csv" and args["data"]["exclude"] == ["holdout.csv"]
    assert args["data"]["cache_dir"] is None and args["training"]["output_dir"] == "machine-out"
    assert args["model"]["init_from"] == "tiny-start"
    reports = [json.loads(line) for line in (output / "reports.jsonl").read_text().splitlines()]
    assert all(r["path"].startswith("audio/") and (pack / r["path"]).is_file() for r in reports)
    skipped = [json.loads(line) for line in (output / "skipped_rows.jsonl").read_text().splitlines()]
    assert skipped == [{"row": "metadata.csv line 58", "file": "audio/silent.flac",
                        "reason": "digitally silent over the model window (constant spectrogram)"}]
    assert "47 recordings from `metadata.csv`" in (output / "README.md").read_text()

    # The evaluator still finds what it needs: the content hash of every aligned recording (one per row used, in
    # reports.jsonl order), and the start, beside the output folder.
    aligned = [json.loads(line) for line in (output / "aligned_recordings.jsonl").read_text().splitlines()]
    assert [entry["path"] for entry in aligned] == [r["path"] for r in reports]
    assert all(entry["sha256"] == file_sha256(pack / entry["path"]) and entry["group_id"] for entry in aligned)
    from acula_eval.leakage_check import load_trained_recordings

    trained = load_trained_recordings(output)
    assert trained.method == "sha256" and trained.reason is None and len(trained) == 47
    assert recorded_start(output) == start


def test_model_card_names_the_hub_id_and_never_a_local_path(tmp_path):
    from modeling_acula import AculaConfig
    from acula_train.model_card import render_model_card

    local = tmp_path / "opera-gt-converted"
    local.mkdir()
    for init_from, base in ((str(local), None), ("path/to/opera-gt-converted", None), ("~/models/x", None),
                            ("evelyn0414/opera-gt", "evelyn0414/opera-gt"), (None, None)):
        card = str(render_model_card(repo_id="alice/acula-lung", config=AculaConfig.from_preset("cpu-small"),
                                     run={"init_from": init_from}, data_summary={}, teacher_identity={}))
        metadata = yaml.safe_load(card.split("---")[1])
        assert metadata.get("base_model") == base, init_from
        assert str(tmp_path) not in card and 'from_pretrained("alice/acula-lung")' in card


def test_second_run_reuses_caches(trained, capsys, monkeypatch):
    _, root = trained

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached recording was decoded again")

    monkeypatch.setattr("acula_train.audio_batches.decode_audio", no_decoding)
    monkeypatch.setattr("acula_train.dataset.decode_audio", no_decoding)
    run_in_process(tiny_args(root / "again", root / "cache", "--max_steps", "1", "--checkpointing_steps", "0"))
    out = capsys.readouterr().out
    assert "hits=48, computed=0" in out  # every report's teacher vector comes from the cache


def test_silent_recordings_are_skipped_and_listed(tmp_path):
    import csv

    import numpy as np
    import soundfile as sf

    rows = list(csv.DictReader(open(REPO / "data" / "auscultation-mini" / "metadata.csv", encoding="utf-8")))
    for row in rows:
        row["file"] = str(REPO / "data" / "auscultation-mini" / row["file"])
    silent = dict(rows[0], file=str(tmp_path / "silent.flac"), group_id="silent-1", suggested_split="train")
    sf.write(silent["file"], np.zeros(16000 * 5, dtype=np.float32), 16000)
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [silent])
    output = run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--manifest", str(tmp_path / "manifest.csv"),
                                      "--split_column", "suggested_split", "--max_steps", "1"))
    skipped = [json.loads(line) for line in (output / "skipped_rows.jsonl").read_text().splitlines()]
    assert [Path(s["file"]).name for s in skipped] == ["silent.flac"] and "line 58" in skipped[0]["row"]
    summary = json.loads((output / "data_summary.json").read_text())
    assert summary["rows_used"] == 48 and summary["skipped"] == {"silent": 1}


def test_teacher_cache_keeps_one_folder_per_teacher_setting(trained):
    _, root = trained
    from acula_train.teacher_cache import TeacherEmbeddingCache

    (index_path,) = (root / "cache" / "teacher").glob("*/index.json")  # the run's teacher setting, one sub-folder
    identity = json.loads(index_path.read_text())["identity"]
    same = TeacherEmbeddingCache(root / "cache" / "teacher", identity)
    assert same.folder == index_path.parent and len(same) > 0
    other = TeacherEmbeddingCache(root / "cache" / "teacher", {**identity, "pooling": "cls"})
    assert other.folder != index_path.parent and len(other) == 0  # vectors of another pooling are never served


def test_fresh_start_into_a_folder_with_checkpoints_is_refused(trained, tmp_path):
    output, root = trained
    interrupted = tmp_path / "interrupted"
    shutil.copytree(output / "checkpoints", interrupted / "checkpoints")  # killed before its final folder
    before = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="holds checkpoints of an interrupted run") as error:
        run_in_process(tiny_args(interrupted, root / "cache", "--max_steps", "1"))
    message = str(error.value)
    assert str(interrupted) in message and "--resume_from_checkpoint latest" in message
    assert "another --output_dir" in message and "--overwrite_output_dir" in message
    assert sorted(p.name for p in (interrupted / "checkpoints").iterdir()) == before  # nothing touched
    with pytest.raises(SystemExit):  # the two flags contradict each other
        train_acula.parse_args(["--overwrite_output_dir", "--resume_from_checkpoint", "latest"])
    # A finished run's folder is simply replaced by a fresh run (as rerunning the demo does), checkpoints included.
    finished = tmp_path / "finished"
    shutil.copytree(output, finished)
    run_in_process(tiny_args(finished, root / "cache", "--max_steps", "1", "--checkpointing_steps", "0"))
    assert not (finished / "checkpoints").exists() and [r["step"] for r in read_log(finished)] == [1]


def test_resume_with_other_settings_is_refused_naming_them(trained, tmp_path):
    output, root = trained
    shutil.copytree(output, tmp_path / "out")
    args = tiny_args(tmp_path / "out", root / "cache", "--max_steps", "4", "--checkpointing_steps", "2",
                     "--resume_from_checkpoint", "latest", "--seed", "7", "--full_finetune", "--lowercase_reports")
    args[args.index("--learning_rate") + 1] = "1e-5"
    args[args.index("--per_device_train_batch_size") + 1] = "16"
    with pytest.raises(ValueError, match="other settings") as error:
        run_in_process(args)
    message = str(error.value)
    for name in ("learning_rate: 0.001 -> 1e-05", "per_device_train_batch_size: 8 -> 16", "seed: 42 -> 7",
                 "full_finetune: False -> True", "lowercase_reports: False -> True"):
        assert name in message
    assert "gradient_accumulation_steps" not in message and "step-00000002" in message
    saved = json.loads((output / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())["run_config"]
    assert saved["num_processes"] == 1 and saved["gradient_accumulation_steps"] == 1
    assert saved["manifest"].endswith("metadata.csv") and saved["rows_used"] == 48


class _StopAfterTeacher(Exception):
    pass


def test_lowercase_reports_reach_the_teacher_lower_cased(trained, tmp_path, monkeypatch):
    output, root = trained
    written = [json.loads(line)["report"] for line in (output / "reports.jsonl").read_text().splitlines()]
    assert any(report != report.lower() for report in written)  # the default keeps the reports' case
    seen = []
    encode = AculaTeacher.encode

    def recording_encode(self, texts, *args, **kwargs):
        seen.extend(texts)
        return encode(self, texts, *args, **kwargs)

    def stop(*args, **kwargs):
        raise _StopAfterTeacher

    monkeypatch.setattr(AculaTeacher, "encode", recording_encode)
    monkeypatch.setattr(AlignmentTrainer, "create_model", stop)  # called right after the teacher vectors
    # the trained run's spectrograms, and an empty teacher cache: the teacher embeds every report
    shutil.copytree(root / "cache" / "spectrograms", tmp_path / "cache" / "spectrograms")
    with pytest.raises(_StopAfterTeacher):
        run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--max_steps", "1", "--lowercase_reports"))
    assert seen and set(seen) == {report.lower() for report in written}
    assert "lowercase_reports" in DataArguments.__dataclass_fields__
    assert DataArguments().lowercase_reports is False


def test_resume_with_the_same_settings_logs_each_step_once(trained, tmp_path):
    output, root = trained
    shutil.copytree(output, tmp_path / "out")  # a finished run: its log holds steps 1-4, its checkpoint step 2
    run_in_process(tiny_args(tmp_path / "out", root / "cache", "--max_steps", "4", "--checkpointing_steps", "2",
                             "--resume_from_checkpoint", "latest"))
    assert read_log(tmp_path / "out") == read_log(output)  # steps 3 and 4 logged again, not twice
    final = load_file(str(tmp_path / "out" / "alignment" / "model.safetensors"))
    for name, value in load_file(str(output / "alignment" / "model.safetensors")).items():
        assert torch.equal(final[name], value), name


def test_output_folder_is_replaced_whole_never_mixed(trained, tmp_path, monkeypatch):
    output, root = trained
    out = tmp_path / "out"
    shutil.copytree(output, out)  # a finished LoRA run, with checkpoints
    args = tiny_args(out, root / "cache", "--max_steps", "1", "--checkpointing_steps", "0", "--full_finetune",
                     "--overwrite_output_dir")
    # interrupted while the new folder is swapped in: the folder is still the LoRA run's, whole
    real_replace = os.replace

    def interrupted(src, dst):
        if str(src).endswith(".acula-staging"):
            raise KeyboardInterrupt("killed during the swap")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(args)
    monkeypatch.setattr(os, "replace", real_replace)
    for name in ("config.json", "model.safetensors", "adapter", "alignment", "README.md"):
        assert (out / name).exists(), name
    assert json.loads((out / "training_args.json").read_text())["model"]["full_finetune"] is False
    assert "LoRA r=8" in (out / "README.md").read_text()

    run_in_process(args)  # completes: nothing of the LoRA run is left
    assert not (out / "adapter").exists() and not (out / "checkpoints").exists()
    assert json.loads((out / "training_args.json").read_text())["model"]["full_finetune"] is True
    card = (out / "README.md").read_text()
    assert "full fine-tuning" in card and "LoRA r=8" not in card
    assert not any(f.startswith("adapter") for f in output_folder.upload_file_list(out))
    assert [r["step"] for r in read_log(out)] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup folder left


def test_output_folder_that_cannot_be_renamed_is_filled_in_place(trained, tmp_path, monkeypatch):
    # A mount point, the working directory or a read-only parent: the files are moved in one by one instead.
    output, root = trained
    out = tmp_path / "mounted"
    shutil.copytree(output, out)  # a finished LoRA run
    (out / "checkpoints").rename(tmp_path / "unused-checkpoints")
    monkeypatch.chdir(out)  # the working directory cannot be renamed away
    assert not output_folder.can_swap_output_folder(out)
    run_in_process(tiny_args(Path("."), root / "cache", "--max_steps", "1", "--checkpointing_steps", "0",
                             "--full_finetune"))
    assert (out / "model.safetensors").is_file() and not (out / "adapter").exists()
    assert not (out / output_folder.IN_FOLDER_STAGING).exists()
    assert json.loads((out / "training_args.json").read_text())["model"]["full_finetune"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted", "unused-checkpoints"]  # nothing beside it


def install_test_hooks(setattr=setattr, *, kill_at: str | None = None, index_dir: str | os.PathLike | None = None):
    """Reach the points of the training loop the tests watch, from outside it (the loop has no test hooks).

    Args:
        setattr: `monkeypatch.setattr` in-process; the builtin in a launcher process (see [`LAUNCHER`]).
        kill_at (`str`, *optional*): `after_step:k` (SIGKILL after step k is logged, before its checkpoint) or
            `checkpoint_write:k` (SIGKILL inside step k's checkpoint write, just before it is published).
        index_dir (`str` or `os.PathLike`, *optional*): each process appends, to `indices_rank{r}.jsonl` there, the
            row indices of every micro-batch it trains on, and at the end a checksum of its parameters.
    """
    import signal

    from acula_train import checkpoints

    if kill_at:
        point, step = kill_at.split(":")
        step = int(step)
        if point == "after_step":
            save = AlignmentTrainer.maybe_save_checkpoint

            def maybe_save_checkpoint(self):
                if self.state["global_step"] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
                return save(self)

            setattr(AlignmentTrainer, "maybe_save_checkpoint", maybe_save_checkpoint)
        else:
            fsync = checkpoints._fsync_folder

            def fsync_then_kill(folder):
                fsync(folder)
                if folder.name == checkpoints.TMP_PREFIX + checkpoints.checkpoint_name(step):
                    os.kill(os.getpid(), signal.SIGKILL)

            setattr(checkpoints, "_fsync_folder", fsync_then_kill)
    if index_dir is not None:
        step_once, train = AlignmentTrainer.training_step, AlignmentTrainer.train

        def record(trainer, entry):
            path = Path(index_dir) / f"indices_rank{trainer.accelerator.process_index}.jsonl"
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

        def training_step(self, window, epoch, micro_step):
            for offset, batch in enumerate(window):
                record(self, {"epoch": epoch, "micro_step": micro_step + offset + 1, "indices": batch["index"].tolist()})
            return step_once(self, window, epoch, micro_step)

        def train_and_checksum(self):
            train(self)
            parameters = self.accelerator.unwrap_model(self.model).parameters()
            record(self, {"parameter_checksum": sum(p.detach().double().sum().item() for p in parameters)})

        setattr(AlignmentTrainer, "training_step", training_step)
        setattr(AlignmentTrainer, "train", train_and_checksum)


# train_acula.py run with the test hooks (see `install_test_hooks`), set by environment variables of the test.
LAUNCHER = """
import os
import sys
sys.path.insert(0, {repo!r})
from tests.acula_train.test_train_acula import install_test_hooks
install_test_hooks(kill_at=os.environ.get("ACULA_TEST_KILL_AT"), index_dir=os.environ.get("ACULA_TEST_INDEX_DIR"))
import train_acula
train_acula.main()
"""


@pytest.fixture
def launcher(tmp_path) -> Path:
    path = tmp_path / "hooked_train_acula.py"
    path.write_text(LAUNCHER.format(repo=str(REPO)))
    return path


def read_indices(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"indices_rank{rank}.jsonl").read_text().splitlines()]


def test_epochs_count_the_last_partial_accumulation(trained, tmp_path, monkeypatch):
    # 48 rows, batch 8: 6 micro-batches per epoch; accumulation 4: steps after micro-batches 4 and 6 (Accelerate
    # steps on an epoch's last, partial accumulation), so 2 steps per epoch and 4 for 2 epochs.
    install_test_hooks(monkeypatch.setattr, index_dir=tmp_path)
    args = tiny_args(tmp_path / "out", trained[1] / "cache", "--num_train_epochs", "2", "--checkpointing_steps", "0")
    args[args.index("--gradient_accumulation_steps") + 1] = "4"
    output = run_in_process(args)
    assert [(r["step"], r["epoch"]) for r in read_log(output)] == [(1, 0), (2, 0), (3, 1), (4, 1)]
    batches = [r for r in read_indices(tmp_path, 0) if "indices" in r]
    assert len(batches) == 12 and {r["epoch"] for r in batches} == {0, 1}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_global_batch(tmp_path, launcher):
    common = ["--max_steps", "3", "--checkpointing_steps", "0"]
    (tmp_path / "indices-ddp").mkdir()
    (tmp_path / "indices-single").mkdir()
    two = run_script(tiny_args(tmp_path / "ddp", tmp_path / "cache", *common), processes=2, script=launcher,
                     env={"ACULA_TEST_INDEX_DIR": str(tmp_path / "indices-ddp")})
    assert two.returncode == 0, two.stderr[-4000:]
    # the single process sees the same global batch of 16 (2 x 8)
    one_args = tiny_args(tmp_path / "single", tmp_path / "cache", *common)
    one_args[one_args.index("--per_device_train_batch_size") + 1] = "16"
    one = run_script(one_args, script=launcher, env={"ACULA_TEST_INDEX_DIR": str(tmp_path / "indices-single")})
    assert one.returncode == 0, one.stderr[-4000:]

    def indices(folder: Path, rank: int) -> list[list[int]]:
        return [record["indices"] for record in read_indices(folder, rank) if "indices" in record]

    rank0, rank1 = indices(tmp_path / "indices-ddp", 0), indices(tmp_path / "indices-ddp", 1)
    single = indices(tmp_path / "indices-single", 0)
    assert len(rank0) == len(rank1) == len(single) == 3
    for a, b, s in zip(rank0, rank1, single):
        assert not set(a) & set(b)  # different shards
        assert sorted(a + b) == sorted(s)  # together: the single process's batch
    # the loss is the single-process loss of the same global batch, step by step: exactly (up to float rounding)
    # for the first two steps; later, Adam's normalised update has turned rounding differences of near-zero
    # gradients into weight differences of up to lr (seen: 1.7e-4 relative at step 3 on an Intel Xeon with AMX,
    # below 1e-5 on an AMD EPYC), so later steps are compared at 1e-3.
    ddp_log, single_log = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert len(ddp_log) == len(single_log) == 3
    for step, (d, s) in enumerate(zip(ddp_log, single_log)):
        tolerance = 1e-5 if step < 2 else 1e-3
        assert d["loss"] == pytest.approx(s["loss"], rel=tolerance)
        assert d["alignment_loss"] == pytest.approx(s["alignment_loss"], rel=tolerance)
    # parameters stayed equal across ranks, and equal the single-process ones
    checks = [read_indices(tmp_path / "indices-ddp", r)[-1] for r in (0, 1)]
    assert checks[0]["parameter_checksum"] == checks[1]["parameter_checksum"]
    # the main process alone fitted the readout on every training pair (no collective left hanging)
    assert json.loads((tmp_path / "ddp" / "alignment" / "readout.json").read_text())["num_pairs"] == 48
    # and the trained models agree with the single-process one. (Weights are compared through outputs: Adam's
    # normalised update turns float-rounding differences of near-zero gradients into differences of up to lr.)
    ddp_model = AculaForPreTraining.from_pretrained(tmp_path / "ddp" / "alignment").eval()
    single_model = AculaForPreTraining.from_pretrained(tmp_path / "single" / "alignment").eval()
    spectrograms = torch.rand(4, 1, 256, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ddp_model(spectrograms).audio_embeds, single_model(spectrograms).audio_embeds,
                               atol=2e-3, rtol=1e-3)


KILL_RUN = ["--max_steps", "7", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2"]
# Fixed kill points, one per case (a drawn one would differ between runs, and between the processes of a parallel
# run, so that a failure could not be rerun by its id): between checkpoints, inside a checkpoint write, and before
# the first checkpoint (the resume then starts from scratch).
FAULT_POINTS = ["after_step:5", "checkpoint_write:4", "after_step:1"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run_script(tiny_args(root / "reference", root / "cache", *KILL_RUN))
    assert result.returncode == 0, result.stderr[-4000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_sigkill_and_resume_gives_the_uninterrupted_result(uninterrupted_run, tmp_path, fault, launcher):
    point, step = fault.split(":")
    step = int(step)
    args = tiny_args(tmp_path / "run", uninterrupted_run / "cache", *KILL_RUN, "--resume_from_checkpoint", "latest")
    killed = run_script(args, env={"ACULA_TEST_KILL_AT": fault}, script=launcher)
    assert killed.returncode == -9, f"{fault}: {killed.stderr[-4000:]}"
    # whole checkpoints are the last two saved before the kill (every 2 steps, never at the final step 7; a kill
    # "after step k" comes before step k's checkpoint); a kill inside a write leaves that step only as a temporary
    # folder, never under a checkpoint name
    saved = [k for k in range(2, 7, 2) if k < step][-2:]
    expected = [f"step-{k:08d}" for k in saved] + ([f".tmp-step-{step:08d}"] if point == "checkpoint_write" else [])
    folder = tmp_path / "run" / "checkpoints"
    found = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert found == sorted(expected), fault
    assert not (tmp_path / "run" / "config.json").exists()  # no half-finished model

    resumed = run_script(args)
    assert resumed.returncode == 0, f"{fault}: {resumed.stderr[-4000:]}"
    assert ("Resumed from" in resumed.stdout) == bool(saved), fault
    final = load_file(str(tmp_path / "run" / "alignment" / "model.safetensors"))
    expected_weights = load_file(str(uninterrupted_run / "reference" / "alignment" / "model.safetensors"))
    for name, value in expected_weights.items():
        assert torch.equal(final[name], value), f"{fault}: {name}"
    assert read_log(tmp_path / "run")[-1] == read_log(uninterrupted_run / "reference")[-1], fault


# --- the start: native presets, Whisper backbones, the default whisper-base ------------------------------------


def test_native_preset_without_a_start_trains_in_full(tmp_path, capsys):
    args = tiny_args(tmp_path / "out", tmp_path / "cache", "--max_steps", "1", "--checkpointing_steps", "0")
    start = args.index("--init_from")
    del args[start : start + 2]
    output = run_in_process(args)
    assert "starts from random weights: training the whole encoder" in capsys.readouterr().err
    assert json.loads((output / "training_args.json").read_text())["model"]["full_finetune"] is True
    assert not (output / "adapter").exists()


@pytest.fixture(scope="module")
def tiny_whisper_start(tmp_path_factory):
    from transformers import WhisperModel


    folder = tmp_path_factory.mktemp("whisper") / "tiny-whisper"
    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config()).save_pretrained(folder)
    return folder


def test_whisper_backbone_aligns_with_lora_and_its_folder_loads(tiny_whisper_start, tmp_path):
    args = tiny_args(tmp_path / "out", tmp_path / "cache", "--max_steps", "2", "--checkpointing_steps", "0",
                     "--window_seconds", "2")
    args[args.index("--init_from") + 1] = str(tiny_whisper_start)
    args[args.index("--config_overrides") + 1] = json.dumps({"projection_hidden_size": 32, "projection_dim": 16})
    output = run_in_process(args)
    encoder, extractor = AutoModel.from_pretrained(output), AutoFeatureExtractor.from_pretrained(output)
    assert isinstance(encoder, AculaModel) and type(encoder.backbone).__name__ == "WhisperEncoder"
    assert encoder.config.audio_backbone_config.max_source_positions == 100
    assert extractor.spectrogram_recipe == "whisper" and extractor.num_samples == 32000
    log = read_log(output)
    assert len(log) == 2 and all("preservation_loss" in record and "mam_loss" not in record for record in log)
    adapter = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and "self_attn" in adapter["target_modules"]
    # the adapters changed the encoder, and only them: the merged weights differ from the start's in the
    # adapted projections alone
    start = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_start), window_seconds=2.0,
                                                    teacher_hidden_size=384).acula.state_dict()
    changed = {name for name, value in encoder.state_dict().items() if not torch.equal(value, start[name])}
    assert changed and all("self_attn" in name and name.endswith("weight") for name in changed), sorted(changed)
    card = (output / "README.md").read_text()
    assert "a 2 s window (the first 100 of Whisper's 1,500 position rows" in card
    # the backbone config's _name_or_path names the start by its folder name only
    assert machine_paths_in_upload(output, [tiny_whisper_start, tmp_path]) == []
    assert encoder.config.audio_backbone_config.name_or_path == "tiny-whisper"
    assert "feature_distillation" in card


@pytest.mark.slow
def test_default_preset_starts_from_the_converted_whisper_base(tmp_path):
    """The main job's start: Whisper-base converted from the installed wheels into the cache, verified, cut to the
    default window, LoRA on its attention (one short step here; `python train_acula.py` runs the whole demo)."""
    output = run_in_process(["--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
                             "--max_steps", "1", "--max_train_samples", "8", "--per_device_train_batch_size", "8",
                             "--gradient_accumulation_steps", "1", "--checkpointing_steps", "0"])
    encoder = AutoModel.from_pretrained(output)
    backbone = encoder.config.audio_backbone_config
    assert (backbone.d_model, backbone.encoder_layers) == (512, 6)
    assert backbone.max_source_positions == round(50 * DEFAULT_WHISPER_WINDOW_SECONDS)
    assert (tmp_path / "cache" / "pretrained" / "whisper-base-encoder" / "model.safetensors").is_file()
    card = (output / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "openai/whisper-base"
    assert (output / "adapter" / "adapter_config.json").is_file()


# --- the arguments: transformers' TrainingArguments, acula's defaults and aliases ---------------------------------


def test_readout_is_fitted_before_the_folder_is_swapped_in(trained, tmp_path, monkeypatch):
    # A kill at any point leaves either the previous folder or this run's with its readout: the readout is fitted
    # into the staged folder. If fitting fails, the trained model is still swapped in and the error names the fix.
    _, root = trained
    out = tmp_path / "out"
    fit = AlignmentTrainer.fit_readout
    seen = []

    def fit_then_fail(self, folder):
        fit(self, folder)
        seen.append(folder)
        assert folder != out and (folder / "alignment" / "readout.json").is_file()
        assert not (out / "config.json").exists()  # the output folder holds only this run's logs until the swap
        raise ValueError("too few pairs")

    monkeypatch.setattr(AlignmentTrainer, "fit_readout", fit_then_fail)
    with pytest.raises(ValueError, match=r"is written, but its zero-shot / retrieval readout could not be fitted: "
                                         r"too few pairs \(refit it with `python -m acula_train.readout fit"):
        run_in_process(tiny_args(out, root / "cache", "--max_steps", "1", "--checkpointing_steps", "0",
                                 "--alignment_loss", "cka"))
    assert len(seen) == 1 and (out / "config.json").is_file() and (out / "alignment" / "readout.json").is_file()


def test_the_training_loop_holds_no_test_hooks():
    # The tests reach the loop's points by patching AlignmentTrainer's methods (`install_test_hooks`).
    sources = [REPO / "train_acula.py", *sorted((REPO / "acula_train").glob("*.py"))]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for hook in ("ACULA_FAULT_INJECTION", "log_batch_indices", "parameter_checksum", "before_publish"):
            assert hook not in text, f"{path.name}: {hook}"
    assert len((REPO / "train_acula.py").read_text(encoding="utf-8").splitlines()) < 80
