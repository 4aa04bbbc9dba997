"""Imported only through ``set_forkserver_preload`` (test_compat.py): records where it was."""

from __future__ import annotations

import os

#: The pid of the process that imported this module: the forkserver when it was preloaded.
IMPORTED_IN = os.getpid()
