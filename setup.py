"""Build hook: the io_uring cffi extension is optional (see framework/io/backends/_uring_build.py)."""

from setuptools import setup

setup()
