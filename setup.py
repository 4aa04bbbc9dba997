"""Build hook for the one optional C extension; all metadata lives in pyproject.toml.

``polyproc._csem`` is the C fast path of the locks (``src/polyproc/_csem.c``).
``optional=True``: with no C compiler the install still succeeds and
``polyproc._sync._sem`` falls back to ctypes (slower, same behaviour).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("polyproc._csem", ["src/polyproc/_csem.c"], optional=True)])
