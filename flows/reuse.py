"""Reuse of unchanged jobs, built on Prefect's task caching and result storage.

A job with ``inputs`` gets a key (:mod:`flows.reuse_keys`). Its ``run-container`` task runs with a cache
policy answering that key, ``persist_result=True`` and a local result storage under the state dir
(``<WORKER_STATE_DIR>/reuse/results/<key>``, JSON): Prefect looks the key up in that folder before the task
runs (a file read, no server call) and, when a result is there, does not run the task body at all; the task
run ends ``Completed`` named ``Cached``. Only a success is written: an allowed failure, a cancel or a failure
turn the transaction's write off (:func:`settle`). The stored result says where the job ran before; its
artifacts were kept (copied, before their upload, to ``reuse/artifacts/<key>/tree/``, laid out as in the
workspace). The pipeline driver then reports the job ``RUNNING`` → ``SUCCESS`` with a note naming the earlier
run, uploads the artifacts again and copies them back into the workspace volume (:func:`restore`). The kept
artifacts' folder is always the store's folder of the key the driver computed, never a path read back from a
stored file, so a tampered result cannot make the worker upload or copy another host folder.

Where a job's ``inputs`` are hashed (:class:`PipelineReuse`): in the project folder when the run has one
(``cicd-worker run``); otherwise (a pipeline run from the backend) in the workspace volume, read when the job
is ready to start, after the jobs it waits for wrote it. In that mode a job it waits for that has no key of
its own (no ``inputs``: the job fetching the sources, say) does not leave it without a key: it enters with a
hash of its definition (:func:`flows.reuse_keys.definition_key`), its outputs being measured in the volume
through the waiting job's own ``inputs``. With a project folder, such a job leaves every job after it
without a key: the folder says nothing of what it wrote.

``reuse/last/`` keeps, per job name, the components of its last successful key (names and hashes, never a
variable's value), for ``cicd-worker run --explain``. The artifacts kept are bounded (``MAX_STORE_BYTES``,
oldest entries dropped first, their results with them).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.transactions import get_transaction

from core.errors import ArtifactsLost, WorkerError
from core.models import ExecutionStatus, JobExecutionDTO
from core.settings import Settings
from executors.artifacts import ArtifactCollection, CollectedArtifact, discard
from executors.base import Executor
from flows.artifact_upload import upload_artifacts
from flows.reporting import JobReporter
from flows.reuse_keys import InputSource, KeyedJob, definition_key, keyed
from flows.reuse_store import REUSED_PREFIX, ReuseStore, write_json

log = logging.getLogger(__name__)

CACHED = "Cached"  # the name Prefect gives a task run's state when it answered from its cache


@dataclass
class ReuseEntry:
    """One job's reuse key in a run, and the artifacts it keeps while its task runs."""

    store: ReuseStore
    job_name: str
    keyed: KeyedJob
    workspace_prefix: str | None
    """Where the job's working dir is in the workspace volume (``""``: its root); None: not in it."""
    refresh: bool = False
    """Run and overwrite whatever is stored (``--no-cache``, or a result whose artifacts are gone)."""
    kept: Path | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return self.keyed.key

    def keep_artifacts(self, collection: ArtifactCollection) -> None:
        """Copy the job's collected artifacts aside (before their upload moves them), laid out as in the
        workspace; a copy that fails leaves the job without reuse, never fails it."""
        if self.kept is not None:  # an earlier attempt's copy (its upload then failed)
            shutil.rmtree(self.kept, ignore_errors=True)
            self.kept = None
        staging = self.store.root / "artifacts" / f".{self.key}.{uuid.uuid4().hex}"
        prefix = self.workspace_prefix or ""
        files, size = [], 0
        try:
            for artifact in collection.files:
                relative = posixpath.normpath(posixpath.join(prefix, artifact.relative_path))
                target = staging / "tree" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(artifact.local_path, target)
                files.append({"path": artifact.relative_path.encode("utf-8", "surrogateescape").hex(),
                              "tree": relative.encode("utf-8", "surrogateescape").hex(),
                              "size": artifact.size, "sha256": artifact.sha256})
                size += artifact.size
            (staging / "tree").mkdir(parents=True, exist_ok=True)
            write_json(staging / "manifest.json", {"files": files, "bytes": size,
                                                    "inWorkspace": self.workspace_prefix is not None})
        except OSError as exc:
            log.warning("artifacts of %s not kept for reuse: %s", self.job_name, exc)
            shutil.rmtree(staging, ignore_errors=True)
            return
        self.kept = staging


def cache_options(entry: ReuseEntry | None) -> dict[str, Any]:
    """The ``run-container`` task options of a job: Prefect's cache on its key when it has one, else none."""
    if entry is None:
        return {}
    return {"cache_policy": CachePolicy.from_cache_key_fn(_task_key), "persist_result": True,
            "result_storage": entry.store.results, "result_serializer": "json", "refresh_cache": entry.refresh}


def _task_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's ``cache_key_fn``: the key of the job the task runs (computed by the pipeline driver)."""
    entry: ReuseEntry | None = getattr(parameters.get("run"), "reuse", None)
    return entry.key if entry is not None else None


def settle(entry: ReuseEntry | None, job: JobExecutionDTO, flow_run_id: object,
           summary: dict[str, Any]) -> dict[str, Any]:
    """The task's return value: for a success of a keyed job, the summary with what a later run needs to
    reuse it; for anything else Prefect's write of the result is turned off (only a success may be cached)."""
    if entry is None:
        return summary
    transaction = get_transaction()
    success = not summary.get("canceled") and not summary.get("allowedFailure")
    if not success or entry.kept is None:
        if transaction is not None:
            transaction.write_on_commit = False
        if entry.kept is not None:
            shutil.rmtree(entry.kept, ignore_errors=True)
        return summary
    final = entry.store.artifacts(entry.key)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(entry.kept, final)
    origin = {"pipelineExecutionId": str(job.pipeline_execution_id or ""), "jobExecutionId": str(job.id),
              "flowRunId": str(flow_run_id or ""), "time": datetime.now(UTC).isoformat(timespec="seconds")}
    reuse = {"key": entry.key, "origin": origin}
    entry.store.save_last(entry.job_name, {**reuse, "components": entry.keyed.components})
    entry.store.trim()
    return {**summary, "reuse": reuse}


InputsFor = Callable[[str], InputSource]
"""Where a job's ``inputs`` are hashed, given its image (a volume is read through a container of it)."""


class PipelineReuse:
    """The keys of one pipeline run's jobs, computed as each becomes ready (its upstream keys are known then).

    ``inputs``: where inputs are hashed (None: nowhere, no job gets a key); ``from_volume``: they are read from
    the workspace volume, so a job without a key of its own passes its definition key downstream (see the
    module docstring)."""

    def __init__(self, store: ReuseStore, inputs: InputsFor | None, image_id: Callable[[str], str | None],
                 enabled: bool = True, from_volume: bool = False) -> None:
        self.store = store
        self.inputs = inputs
        self.image_id = image_id
        self.enabled = enabled
        self.from_volume = from_volume
        self.keys: dict[str, str | None] = {}
        """Per job id, what it passes downstream: its reuse key, its definition key, or None (nothing)."""
        self._images: dict[str, str | None] = {}

    def skip(self, job_id: str) -> None:
        """The job gets no key (nor does any job waiting for it, with a project folder or not)."""
        self.keys[job_id] = None

    def entry(self, job_id: str, job: JobExecutionDTO, needs: dict[str, str],
              workspace_prefix: str | None) -> ReuseEntry | None:
        """The job's reuse entry, or None when it has no key: no ``inputs``, nowhere to hash them, its image not
        here, its inputs not hashed, or a job it needs passes nothing. ``needs``: name → job id of its upstream
        jobs."""
        self.keys[job_id] = None
        upstream = {name: self.keys.get(dep) for name, dep in needs.items()}
        if self.inputs is None or (not job.job.inputs and not self.from_volume) or None in upstream.values():
            return None
        image_id = self._image(job.job.docker_image)
        if image_id is None:
            return None
        upstream_keys = {name: str(key) for name, key in upstream.items()}
        if self.from_volume:  # what it passes downstream unless it gets a key of its own below
            self.keys[job_id] = definition_key(job.job, image_id, upstream_keys)
        files = self._hash_inputs(job) if job.job.inputs else None
        if files is None:
            return None
        keyed_job = keyed(job.job, image_id, files, upstream_keys)
        self.keys[job_id] = keyed_job.key
        refresh = not self.enabled or (self.store.has_result(keyed_job.key) and not self.store.usable(keyed_job.key))
        return ReuseEntry(self.store, job.job.name, keyed_job, workspace_prefix, refresh=refresh)

    def _hash_inputs(self, job: JobExecutionDTO) -> dict[str, str] | None:
        assert self.inputs is not None
        try:
            return self.inputs(job.job.docker_image).matching(job.job.inputs)
        except (OSError, ValueError, WorkerError) as exc:  # gone, over the cap or the time budget, engine down
            log.warning("inputs of %s not hashed, it runs: %s", job.job.name, exc)
            return None

    def _image(self, image: str) -> str | None:
        if image not in self._images:
            try:
                self._images[image] = self.image_id(image)
            except WorkerError:  # the engine is down: the job runs, and fails there with the real reason
                self._images[image] = None
        return self._images[image]


def workspace_prefix(working_dir: str, mount: str, volume: str | None) -> str | None:
    """The job's working dir relative to the workspace volume's root, or None when it is outside it."""
    if volume is None:
        return None
    relative = posixpath.relpath(working_dir, mount)
    return None if relative.startswith("..") else ("" if relative == "." else relative)


def cached_record(state: Any) -> dict[str, Any] | None:
    """What a task run answered from Prefect's cache stored for reuse, or None when it ran (or failed)."""
    if state is None or state.name != CACHED:
        return None
    summary = state.result(raise_on_failure=False)
    return summary.get("reuse") if isinstance(summary, dict) else None


def restore(reporter: JobReporter, entry: ReuseEntry, record: dict[str, Any], settings: Settings) -> None:
    """Report a reused job: ``RUNNING``, a note naming the earlier run (from ``record``, what Prefect's cache
    answered), its kept artifacts uploaded again, ``SUCCESS`` (``FAILED`` when they cannot be). Copying them
    back into the workspace is :func:`restore_workspace`, done only when a job that runs comes after it."""
    reporter.running(1)
    origin = record.get("origin")
    origin = origin if isinstance(origin, dict) else {}
    earlier = str(origin.get("pipelineExecutionId") or origin.get("flowRunId"))[:64]
    note = f"{REUSED_PREFIX}unchanged since run {earlier} of {str(origin.get('time'))[:40]} (key {entry.key[:12]})"
    reporter.log.note(note)
    folder = entry.store.artifacts(entry.key)  # never a path read from the record
    try:
        collection = _collection(folder, json.loads((folder / "manifest.json").read_text()))
        try:
            upload_artifacts(reporter.outbox, str(reporter.job.id), collection, reporter.log,
                             wait_seconds=settings.artifact_wait_seconds)
        finally:
            discard(collection)
    except (OSError, ValueError, KeyError, WorkerError, ArtifactsLost) as exc:
        reporter.log.note(f"job failed: the kept artifacts could not be restored: {exc}; run with --no-cache")
        reporter.final(ExecutionStatus.FAILED, message=f"reuse failed: {exc}")
        return
    reporter.final(ExecutionStatus.SUCCESS, exit_code=0, message=note)


def restore_workspace(entry: ReuseEntry, image: str, executor: Executor, volume: str, settings: Settings) -> None:
    """Copy a reused job's kept artifacts back into the workspace volume, where its working dir put them (its
    "workspace outputs"), through ``Executor.seed_volume``; a failure is logged (the job after it fails on
    its own when it needed them)."""
    folder = entry.store.artifacts(entry.key)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["files"] and manifest.get("inWorkspace"):
            executor.seed_volume(volume, folder / "tree", image, settings.default_working_dir, settings.seed_max_bytes)
    except (OSError, ValueError, KeyError, WorkerError) as exc:
        log.warning("outputs of reused job %s (key %s) not copied into the workspace: %s", entry.job_name,
                    entry.key[:12], exc)


def answered_from_cache(entry: ReuseEntry | None) -> bool:
    """Whether Prefect will answer this job's task from its cache (nothing runs)."""
    return entry is not None and not entry.refresh and entry.store.usable(entry.key)


def _collection(folder: Path, manifest: dict[str, Any]) -> ArtifactCollection:
    """Copies of the kept artifacts in a temporary folder, for the outbox to take (it moves what it queues)."""
    directory = Path(tempfile.mkdtemp(prefix="cicd-reuse-"))
    collection = ArtifactCollection(directory=directory)
    try:
        for number, item in enumerate(manifest["files"]):
            copy = directory / str(number)
            tree = _inside(bytes.fromhex(item["tree"]).decode("utf-8", "surrogateescape"))
            shutil.copyfile(folder / "tree" / tree, copy)
            relative = bytes.fromhex(item["path"]).decode("utf-8", "surrogateescape")
            collection.files.append(CollectedArtifact(relative, copy, int(item["size"]), str(item["sha256"])))
    except (OSError, ValueError, KeyError):
        discard(collection)
        raise
    return collection


def _inside(relative: str) -> str:
    """A path of the kept tree as the manifest names it, refused when it would reach outside the tree."""
    normal = posixpath.normpath(relative)
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise ValueError(f"kept artifact path {relative!r} leaves its folder")
    return normal
