"""The pool engine: one scheduler under Pool, ThreadPool and ProcessPoolExecutor.

``scheduler`` (pure policy) ← ``engine`` (the one thread that touches workers) ←
``pool`` / ``executor`` / ``threadpool`` (the faces); ``worker`` runs in each child.
Import the faces from ``polyproc.pool`` and ``polyproc.futures``.
"""
