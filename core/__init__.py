"""The shared core: wire models, settings, errors, backend client, outbox, state databases, job records, metrics.

Imports nothing of the other packages of this project (see docs/architecture.md).
"""
