"""setup.py exists only for cffi: `cffi_modules` compiles babyllama._babyllama from run.c
(see babyllama/_build.py). Everything else about the package is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["babyllama/_build.py:ffibuilder"])
