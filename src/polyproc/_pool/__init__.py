"""The pool engine: one scheduler under Pool, ThreadPool and ProcessPoolExecutor.

``tasks`` (vocabulary) ← ``scheduler`` (pure policy) ← ``engine`` (the thread that
owns the workers, writing through ``channel``) ← ``pool`` / ``executor`` (the faces, with ``results``);
``worker`` runs in each child, ``messages`` is what travels between them.
Import the faces from ``polyproc.pool`` and ``polyproc.futures``; see docs/pool.md.
"""
