"""Shared memory: anonymous memfd arenas (``heap``), ctypes Values and Arrays
(``sharedctypes``), named POSIX segments (``shared_memory``) with their
owner-death tracker (``tracker``), shared NumPy arrays (``ndarray``) and the
large-buffer path used by Connection and Queue (``bulk``)."""
