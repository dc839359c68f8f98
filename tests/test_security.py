"""Untrusted files and unsafe code: a source scan, the formats a training run writes, and pickles that never run.

The scan parses the code (ast), so comments and docstrings may discuss `trust_remote_code=True` or `torch.load`;
only real calls, defaults and imports count.
"""

import ast
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import modeling_acula
from modeling_acula.convert_opera_checkpoint import convert_opera_checkpoint, load_checkpoint_state_dict
from tests.testing_utils import REPO, run_in_process, tiny_args

SOURCE_ROOTS = ["modeling_acula", "acula_train", "acula_eval", "train_acula.py", "eval_acula.py", "benchmarks", "scripts"]
# The only call allowed to unpickle arbitrary objects: the explicit `allow_unsafe_pickle=True` opt-in of the
# OPERA converter (its refusal without the opt-in is tested below).
ALLOWED_UNSAFE_TORCH_LOAD = {("modeling_acula/convert_opera_checkpoint.py", "load_checkpoint_state_dict")}


def _source_files() -> list[Path]:
    files = []
    for root in SOURCE_ROOTS:
        path = REPO / root
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*.py")) if "__pycache__" not in p.parts)
    return files


def _dotted(node: ast.AST) -> str:
    """`torch.load` for Attribute(Name('torch'), 'load'); '' for anything that is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def scan_source(path: Path, text: str | None = None, allowed: set = ALLOWED_UNSAFE_TORCH_LOAD) -> list[str]:
    """Every unsafe pattern in one Python file, as `file:line: what`; `allowed` holds (file, function) pairs
    whose `torch.load` may unpickle."""
    text = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(text, filename=str(path))
    relative = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name
    problems = []
    parents: dict[ast.AST, ast.AST] = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def enclosing_function(node: ast.AST) -> str:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node.name
        return ""

    def report(node: ast.AST, what: str) -> None:
        problems.append(f"{relative}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            if name == "torch.load" and not _is_true(keywords.get("weights_only")):
                if (relative, enclosing_function(node)) not in allowed:
                    report(node, "torch.load without weights_only=True")
            if name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in (
                    "pickle", "cPickle", "dill", "cloudpickle", "joblib", "_pickle"):
                report(node, f"{name}: unpickling runs code from the file")
            if name in ("np.load", "numpy.load") and _is_true(keywords.get("allow_pickle")):
                report(node, "np.load(allow_pickle=True)")
            if _is_true(keywords.get("trust_remote_code")):
                report(node, "trust_remote_code=True hard-coded in a call")
            device_map = keywords.get("device_map")
            if isinstance(device_map, ast.Constant) and device_map.value == "auto":
                report(node, 'device_map="auto"')
            if name in ("field", "dataclasses.field") and _is_true(keywords.get("default")):
                target = parents.get(node)
                if isinstance(target, ast.AnnAssign) and "trust_remote_code" in _dotted(target.target):
                    report(node, "trust_remote_code option defaults to True")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            positional = arguments.posonlyargs + arguments.args
            pairs = list(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults))
            pairs += [(arg, default) for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults) if default]
            for argument, default in pairs:
                if "trust_remote_code" in argument.arg and _is_true(default):
                    report(node, f"{node.name}({argument.arg}=True) default")
        elif isinstance(node, ast.AnnAssign) and "trust_remote_code" in _dotted(node.target) and _is_true(node.value):
            report(node, "trust_remote_code attribute defaults to True")
        elif isinstance(node, ast.Assign) and _is_true(node.value):
            if any("trust_remote_code" in _dotted(target) for target in node.targets):
                report(node, "trust_remote_code assigned True")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names = [alias.name for alias in node.names]
            if module in ("pickle", "_pickle", "dill") and {"load", "loads", "Unpickler"} & set(names):
                report(node, f"from {module} import {names}")
    return problems


# Split so that this file does not match its own patterns.
SECRET_PATTERNS = {
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{30,}\b",
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret access key": r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}",
    "private key": "-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?" + "PRIVATE KEY-----",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    "OpenAI key": r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}\b",
    "Slack token": r"\bxox[baprs]-[A-Za-z0-9-]{10,}",
}


def scan_secrets(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]


def _repository_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    files = []
    for name in listed:
        path = REPO / name
        if path.is_file() and path.stat().st_size < 2_000_000 and path.suffix not in (".flac", ".wav", ".png"):
            files.append(path)
    return files


def test_scanner_finds_what_it_looks_for(tmp_path):
    """The scan below is only worth something if it catches each pattern (and ignores docs and comments)."""
    bad = '''
import pickle, torch
from pickle import loads
def load(path, trust_remote_code=True):
    state = torch.load(path)
    other = torch.load(path, weights_only=False)
    data = pickle.load(open(path, "rb"))
    model = AutoModel.from_pretrained(path, trust_remote_code=True, device_map="auto")
    return np.load(path, allow_pickle=True)
@dataclass
class Args:
    teacher_trust_remote_code: bool = field(default=True)
'''
    found = scan_source(tmp_path / "bad.py", bad)
    assert len(found) == 9, found
    good = '''
"""Docs may say trust_remote_code=True and torch.load(path)."""
import torch
def load(path, trust_remote_code=False):  # never torch.load(path) without weights_only=True
    return torch.load(path, map_location="cpu", weights_only=True)
'''
    assert scan_source(tmp_path / "good.py", good) == []
    token = "hf_" + "a1B2" * 9
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert scan_secrets(f"HF_TOKEN={token}\nkey = '{key}'") == ["Hugging Face token", "AWS access key id"]
    assert scan_secrets("-----BEGIN " + "OPENSSH PRIVATE KEY-----") == ["private key"]
    assert scan_secrets("huggingface_hub.login(token=os.environ['HF_TOKEN'])") == []


def test_source_has_no_unsafe_loading_or_remote_code_defaults():
    files = _source_files()
    assert REPO / "modeling_acula" / "convert_opera_checkpoint.py" in files and REPO / "train_acula.py" in files
    problems = [problem for path in files for problem in scan_source(path)]
    assert problems == []
    # the one allowed unsafe load is where we think it is, behind its opt-in
    converter = REPO / "modeling_acula" / "convert_opera_checkpoint.py"
    unsafe = scan_source(converter, allowed=set())
    assert len(unsafe) == 1 and "torch.load without weights_only=True" in unsafe[0]
    assert "if not allow_unsafe_pickle:" in converter.read_text()


def test_repository_holds_no_secrets():
    files = _repository_text_files()
    assert len(files) > 20
    leaks = {}
    for path in files:
        found = scan_secrets(path.read_text(encoding="utf-8", errors="ignore"))
        if found and path != Path(__file__).resolve():
            leaks[str(path.relative_to(REPO))] = found
    assert leaks == {}


def test_remote_code_options_default_to_false():
    import inspect

    import train_acula
    from acula_train.teacher import AculaTeacher

    assert train_acula.ModelArguments().teacher_trust_remote_code is False
    parameter = inspect.signature(AculaTeacher.from_pretrained).parameters.get("trust_remote_code")
    assert parameter is None or parameter.default is False


# ---------------------------------------------------------------------------------------- what acula writes


PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _check_written_file(path: Path, root: Path) -> str | None:
    """None when `path` is a format that cannot carry code, else why not."""
    data = path.read_bytes()
    if data[:2] in PICKLE_MAGIC or (zipfile.is_zipfile(io.BytesIO(data)) and data[:2] == b"PK"):
        return "a pickle / torch zip archive"
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            list(handle.keys())  # parses the header: a real safetensors file
        return None
    if path.suffix == ".json":
        json.loads(data)
        return None
    if path.suffix == ".jsonl":
        for line in data.decode("utf-8").splitlines():
            json.loads(line)
        return None
    if path.suffix == ".md":
        data.decode("utf-8")
        return None
    if path.name == ".lock" and not data:
        return None  # the teacher cache's empty lock file (flock), no content at all
    if path.suffix == ".py":
        # the model code copied by `save_pretrained` (for trust_remote_code loading without acula): byte-identical
        # to the package's own modules, so nothing else can ride along
        original = Path(modeling_acula.__file__).parent / path.name
        return None if original.is_file() and original.read_bytes() == data else "a .py file that is not acula's"
    return f"an unexpected file type {path.suffix!r}"


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("security-run")
    output = run_in_process(tiny_args(root / "out", root / "cache", "--max_steps", "3", "--checkpointing_steps", "2"))
    return output, root / "cache"


def test_every_file_a_training_run_writes_is_safetensors_json_markdown_or_acula_code(training_run):
    output, cache = training_run
    written = [p for folder in (output, cache) for p in folder.rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in written}
    assert {".safetensors", ".json", ".jsonl", ".md"} <= suffixes
    assert any(p.parent.name.startswith("step-") for p in written)  # checkpoints are included
    assert any(p.is_relative_to(cache / "spectrograms") for p in written)  # and both caches
    assert any(p.is_relative_to(cache / "teacher") for p in written)
    problems = {str(p): why for p in written
                if (why := _check_written_file(p, output))}
    assert problems == {}


def test_output_folder_loads_without_remote_code(training_run):
    from transformers import AutoConfig, AutoModel

    output, _ = training_run
    config = json.loads((output / "config.json").read_text())
    assert "auto_map" in config  # the folder carries its code for environments without acula ...
    model = AutoModel.from_pretrained(output)  # ... but with acula installed no trust_remote_code is needed
    assert type(model) is modeling_acula.AculaModel
    assert type(AutoConfig.from_pretrained(output)) is modeling_acula.AculaConfig


# ------------------------------------------------------------------------------------------ malicious pickles


class _Payload:
    """Unpickling this object runs `exec`, which creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _tiny_opera_state_dict() -> dict[str, torch.Tensor]:
    return {"encoder.patch_embed.proj.weight": torch.zeros(8, 1, 16, 16), "encoder.cls_token": torch.zeros(1, 1, 8)}


@pytest.mark.parametrize("layout", ["lightning-zip", "legacy-pickle"])
def test_malicious_checkpoint_never_runs_without_opt_in(tmp_path, layout):
    marker = tmp_path / "marker"
    path = tmp_path / "OPERA-GT.ckpt"
    checkpoint = {"state_dict": _tiny_opera_state_dict(), "hyper_parameters": _Payload(marker)}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=layout == "lightning-zip")

    with pytest.raises(ValueError, match="Refusing to load .*allow_unsafe_pickle=True"):
        load_checkpoint_state_dict(path)
    with pytest.raises(ValueError, match="Refusing to load"):
        convert_opera_checkpoint(path, tmp_path / "converted", config="cpu-small")
    if layout == "lightning-zip":  # the command line, once (a subprocess costs seconds)
        command = [sys.executable, "-m", "modeling_acula.convert_opera_checkpoint", str(path), str(tmp_path / "cli")]
        cli = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert cli.returncode == 2 and "Refusing to load" in cli.stderr and "--allow-unsafe-pickle" in cli.stderr
    assert not marker.exists()
    assert not (tmp_path / "converted").exists() and not (tmp_path / "cli").exists()

    # control: the file really is malicious, and the opt-in (by name) is what runs it
    state_dict = load_checkpoint_state_dict(path, allow_unsafe_pickle=True)
    assert marker.read_text() == "pwned" and set(state_dict) == set(_tiny_opera_state_dict())
