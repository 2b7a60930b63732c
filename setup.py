"""CYBORGS: contrastively bootstrapping object representations, as a detectron2 project.

Install through `make install` (it pins torch, installs detectron2 as METHOD.md §7 describes and
then this package in editable mode); `pip install -e .` alone expects those to be present.
"""

from setuptools import find_packages, setup

setup(
    name="cyborgs",
    version="0.1.0",
    description="CYBORGS (ECCV 2022) pretraining and transfer suite on detectron2",
    packages=find_packages(include=["cyborgs", "cyborgs.*"]),
    python_requires=">=3.10",
    # Runtime dependencies are pinned in requirements.txt; detectron2 has no registry wheel.
    install_requires=[],
)
