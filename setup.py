"""setup.py exists only for cffi: `cffi_modules` compiles babyllama._babyllama from run.c and
babyllama._attention from attention.c (see babyllama/_build.py). Everything else about the package
is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["babyllama/_build.py:ffibuilder", "babyllama/_build.py:attention_builder"])
