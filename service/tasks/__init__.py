"""Durable tasks shared by every replica: a store behind one interface, and a worker loop.

``ELBO_SERVE_TASK_STORE`` picks the store (:func:`open_store`): empty (the default) an
embedded SQLite file under ``ELBO_SERVE_TASK_DIR`` that survives restarts, or
``redis://HOST:PORT/DB`` for a Redis server every replica shares. The HTTP routes
(:mod:`service.tasks.routes`) and the worker loop (:mod:`service.tasks.worker`) see only
:class:`service.tasks.store.TaskStore`. Semantics: docs/tasks.md.
"""

from __future__ import annotations

from service.tasks.store import StoreConfig, TaskStore

_OPEN: dict[StoreConfig, TaskStore] = {}


def open_store(config: StoreConfig) -> TaskStore:
    """The process's store for ``config`` (one per process: the routes and the worker loop
    of a BentoML worker share it)."""
    if config not in _OPEN:
        if config.url.startswith("redis://"):
            from service.tasks.redis_store import RedisStore

            _OPEN[config] = RedisStore(config)
        else:
            from service.tasks.sqlite_store import SqliteStore

            _OPEN[config] = SqliteStore(config)
    return _OPEN[config]
