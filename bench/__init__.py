"""Benchmarks: each prints figures and ratios against a baseline measured in the same run.

Run from the repository root as modules, e.g. ``.venv/bin/python -m bench.job_latency``. What they share
(the Prefect server, reference backend and worker process they start, the backend's records, ``docker run``
baselines) is in ``bench.harness``; what they read off the host (``/proc``, ``docker events``) and the
number helpers are in ``bench.readings``; the py-spy profiling of ``bench.logs`` and ``bench.soak`` is in
``bench.profiling``.
"""
