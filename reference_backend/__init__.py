"""A small, real CI/CD backend implementing the backend side of the contract (``docs/contract.md``).

FastAPI + SQLite, artifacts on disk, Jackson-style JSON on the wire. Tests of
the worker drive it over loopback HTTP (:class:`reference_backend.server.BackendServer`);
``cicd-reference-backend`` runs it standalone.

Modules: ``wire`` (bodies and Jackson-style JSON), ``violations`` (status
sequence checks), ``store`` (SQLite), ``artifacts`` (files on disk),
``faults`` (503 injection), ``contract`` and ``admin`` (routes), ``app``
(``create_app``), ``server`` (``BackendServer``).
"""
