"""Packaging: the same code and bundled models ship to workers with --setup_file or a container."""

from setuptools import find_packages, setup

# Ranges tested together (see requirements.lock for the exact versions CI and workers use).
INSTALL_REQUIRES = [
    "apache-beam>=2.77.0,<2.78",
    "tensorflow>=2.21.0,<2.22",
    "keras>=3.15,<4",
    "numpy>=2.4,<2.5",
    "pyarrow>=25,<26",
    "opencv-python-headless>=5.0,<6",
]

setup(
    name="beam-detect-classify",
    version="0.1.0",
    description="Apache Beam batch job: detect objects in image archives, classify each region, "
                "write Parquet.",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["beam_pipeline", "beam_pipeline.*", "transforms",
                                    "transforms.*", "models", "training", "training.*"]),
    package_data={
        "beam_pipeline.report": ["*.html"],  # the report's page template
        # Everything the trainers write into models/ (tests/test_packaging.py checks that each
        # file committed there is in the wheel and the sdist that --setup_file ships).
        "models": [
            "*.md",
            "detector/*.pbtxt",
            "detector/*.json",
            "detector/saved_model/*.pb",
            "detector/saved_model/variables/*",
            "detector/saved_model/assets/*",
            "detector/saved_model/assets.extra/*",
            "classifier/*.keras",
            "classifier/*.txt",
            "classifier/*.json",
        ],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "aws": ["apache-beam[aws]>=2.77.0,<2.78"],
        "gcp": ["apache-beam[gcp]>=2.77.0,<2.78"],
        "eval": ["faster-coco-eval>=1.6,<2"],
        "report": ["matplotlib>=3.9,<4"],
        "test": ["pytest>=9,<10", "pytest-xdist>=3.8,<4", "hypothesis>=6,<7",
                 "moto[server]>=5,<6", "Pillow>=10",
                 "apache-beam[aws]>=2.77.0,<2.78", "faster-coco-eval>=1.6,<2",
                 "matplotlib>=3.9,<4", "pycocotools>=2.0,<3", "selenium>=4.20,<5",
                 "duckdb>=1.1,<3"],
    },
    entry_points={"console_scripts": ["beam-detect-classify=beam_pipeline.main:main"]},
)
