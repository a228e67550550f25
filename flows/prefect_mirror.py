"""The Prefect record of a job this process runs directly, written off the job's critical path.

A job sent to ``POST /api/job/execute`` starts at once in a thread of the worker; its Prefect record (one
``execute-job`` flow run and one ``run-container`` task run, their states and the job's log) is written by
this mirror, in the background, in the order things happened: creating a flow run, a task run and moving
them through their states costs five to seven writes before a container could start when the flow and
task engines run the job, and a busy Prefect server made jobs wait seconds for each.

Writes per job: the flow run created Running (1), the task run created Running (1), a Retrying state per
retry, the task run's final state (1) and the flow run's (1); the log goes in Prefect's own batches.

Each job's writes go through one of a few queues (chosen by the job's id, so they stay in order); each is
tried on the short schedule of :class:`flows.prefect_writes.PrefectWriter`. When Prefect is unavailable the
write stays at the head of its queue and is tried again every ``retry_seconds`` until it is
``max_age_seconds`` old: the job is never late because of Prefect, and its record catches up once Prefect
answers. A write Prefect refuses (4xx) is dropped with a warning, and with the flow run's creation the
job's later writes too.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactCreate, TaskRunCreate
from prefect.client.schemas.objects import TaskRunPolicy
from prefect.logging.loggers import PrefectLogAdapter
from prefect.states import Cancelled, Completed, Failed, Retrying, Running, State, to_state_create

from core.job_records import JobRecord
from core.models import ExecutionStatus
from flows.cancel_watch import CancelWatch, Watched
from flows.prefect_writes import FlowRunFactory, PrefectWriter, transient

log = logging.getLogger(__name__)

TASK_NAME = "run-container"


@dataclass(eq=False)
class MirroredJob:
    """One job's Prefect record: its flow run (once created) and task run (its id is chosen here)."""

    record: JobRecord
    name: str
    task_run_id: UUID = field(default_factory=uuid4)
    flow_run_id: UUID | None = None
    created: threading.Event = field(default_factory=threading.Event)  # set when the flow run exists or never will
    broken: bool = False  # the flow run could not be created: nothing more is written
    watched: Watched | None = None
    logger: logging.LoggerAdapter[Any] | None = None  # the task run's Prefect logger, once the flow run exists
    late_logger: LateLogger = field(init=False)
    on_created: Callable[[UUID], None] | None = None

    def __post_init__(self) -> None:
        self.late_logger = LateLogger(self)


class LateLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What a job's lines are forwarded to: the task run's Prefect logger once its flow run exists; the
    records before that are held (at most ``max_held``, about 64 KiB each) and sent first."""

    def __init__(self, job: MirroredJob, max_held: int = 32) -> None:
        super().__init__(logging.getLogger("prefect.task_runs"), {})
        self._job = job
        self._held: list[str] = []
        self._max_held = max_held
        self._lock = threading.Lock()

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        with self._lock:
            target = self._job.logger
            if target is None:
                if len(self._held) < self._max_held:
                    self._held.append(str(msg))
                return
            self._send_held(target)
        target.info(msg, *args, **kwargs)

    def flush(self) -> None:
        """Send what was held (the mirror calls it once the flow run exists)."""
        with self._lock:
            if self._job.logger is not None:
                self._send_held(self._job.logger)

    def _send_held(self, target: logging.LoggerAdapter[Any]) -> None:
        for held in self._held:
            target.info(held)
        self._held.clear()


@dataclass
class _Write:
    job: MirroredJob
    action: Callable[[SyncPrefectClient], Any]
    what: str
    queued_at: float = field(default_factory=time.monotonic)


class PrefectMirror:
    """Writes jobs' Prefect records in the background; thread-safe. Threads live only while there is work."""

    def __init__(self, flow: Any, cancel_watch: CancelWatch, lanes: int = 2, retry_seconds: float = 5.0,
                 max_age_seconds: float = 600.0, idle_seconds: float = 5.0) -> None:
        self._flow = flow
        self._cancel_watch = cancel_watch
        self._writer = PrefectWriter()
        self._flow_runs = FlowRunFactory(self._writer)
        self._lanes = [_Lane(self, i) for i in range(lanes)]
        self.retry_seconds = retry_seconds
        self.max_age_seconds = max_age_seconds
        self.idle_seconds = idle_seconds

    # -- what a job's runner calls -------------------------------------------------------------------

    def begin(self, record: JobRecord, name: str, params: dict[str, Any], tags: list[str],
              on_created: Callable[[UUID], None] | None = None) -> MirroredJob:
        """Queue the job's flow run and task run, both Running from now; ``on_created(flow_run_id)`` is called
        once the flow run exists (e.g. to write its id down for crash recovery)."""
        job = MirroredJob(record, name, on_created=on_created)
        # Ahead of the other jobs' writes (the answer to the request waits for the flow run's id); in this
        # job's own order, since they are its first.
        self._lane(job).put([_Write(job, self._create_flow_run(job, params, tags), "create the flow run"),
                             _Write(job, self._create_task_run(job), "create the task run")], first=True)
        return job

    def retrying(self, job: MirroredJob, attempt: int) -> None:
        """Attempt ``attempt`` (2, 3, ...) starts: the task run moves to Retrying."""
        self._queue(job, self._set_task_state(job, Retrying(message=f"attempt {attempt}")), "mark a retry")

    def artifacts(self, job: MirroredJob, key: str, rows: list[dict[str, object]], description: str) -> None:
        """A table artifact of the job's uploaded files, on its task run."""
        def create(client: SyncPrefectClient) -> None:
            client.create_artifact(ArtifactCreate(key=key, type="table", data=json.dumps(rows, default=str),
                                                  description=description, flow_run_id=job.flow_run_id,
                                                  task_run_id=job.task_run_id))

        self._queue(job, create, "publish the artifacts table")

    def finish(self, job: MirroredJob, status: ExecutionStatus, message: str | None,
               exit_code: int | None = None) -> None:
        """The job is final: its task run and flow run end in the matching Prefect state (a SUCCESS with a
        non-zero exit code is an allowed failure: Completed named ``AllowedFailure``, as in pipeline runs)."""
        final: State
        if status is ExecutionStatus.SUCCESS and exit_code:
            final = Completed(name="AllowedFailure", message=f"allowed to fail: exit {exit_code}")
        elif status is ExecutionStatus.SUCCESS:
            final = Completed(message=message)
        elif status is ExecutionStatus.CANCELED:
            final = Cancelled(message=message)
        else:
            final = Failed(message=message)
        self._queue(job, self._set_task_state(job, final), "end the task run")
        self._queue(job, self._set_flow_state(job, final.model_copy()), "end the flow run")

    def close(self) -> None:
        """Write what is queued (a few seconds at most; the rest is dropped, with a warning), close the client."""
        for lane in self._lanes:
            lane.close()
        self._writer.close()

    # -- the writes ------------------------------------------------------------------------------------

    def _create_flow_run(self, job: MirroredJob, params: dict[str, Any],
                         tags: list[str]) -> Callable[[SyncPrefectClient], Any]:
        def create(client: SyncPrefectClient) -> None:
            flow_run = self._flow_runs.create(self._flow, params, job.name, tags, state=Running())
            job.flow_run_id = flow_run.id
            job.record.flow_run_id = job.record.flow_run_id or flow_run.id
            job.logger = PrefectLogAdapter(logging.getLogger("prefect.task_runs"), extra={
                "flow_run_id": str(flow_run.id), "task_run_id": str(job.task_run_id),
                "task_run_name": job.record.name, "task_name": TASK_NAME, "flow_run_name": job.name})
            job.watched = self._cancel_watch.add(flow_run.id, lambda: [job.record])
            if job.on_created is not None:
                job.on_created(flow_run.id)
            job.created.set()

        return create

    def _create_task_run(self, job: MirroredJob) -> Callable[[SyncPrefectClient], Any]:
        def create(client: SyncPrefectClient) -> None:
            assert job.flow_run_id is not None
            body = TaskRunCreate(id=job.task_run_id, name=job.record.name, flow_run_id=job.flow_run_id,
                                 task_key=TASK_NAME, dynamic_key=str(job.task_run_id),
                                 empirical_policy=TaskRunPolicy(), state=to_state_create(Running()))
            client.request("POST", "/task_runs/", json=body.model_dump(mode="json"))
            job.late_logger.flush()  # the lines held until now, on the task run that exists now

        return create

    def _set_task_state(self, job: MirroredJob, state: State) -> Callable[[SyncPrefectClient], Any]:
        return lambda client: client.set_task_run_state(job.task_run_id, state, force=True)

    def _set_flow_state(self, job: MirroredJob, state: State) -> Callable[[SyncPrefectClient], Any]:
        def end(client: SyncPrefectClient) -> None:
            assert job.flow_run_id is not None
            client.set_flow_run_state(job.flow_run_id, state, force=True)
            if job.watched is not None:
                self._cancel_watch.remove(job.watched)

        return end

    # -- the queues ------------------------------------------------------------------------------------

    def _lane(self, job: MirroredJob) -> _Lane:
        return self._lanes[job.task_run_id.int % len(self._lanes)]

    def _queue(self, job: MirroredJob, action: Callable[[SyncPrefectClient], Any], what: str) -> None:
        self._lane(job).put([_Write(job, action, what)])

    def _write(self, write: _Write) -> bool:
        """One write, retried on the writer's short schedule; False when it must be tried again later."""
        if write.job.broken:
            return True
        try:
            self._writer.call(write.action)
        except Exception as exc:
            age = time.monotonic() - write.queued_at
            if transient(exc) and age < self.max_age_seconds:
                log.warning("Prefect did not answer (%s); will %s later for %s", exc, write.what, write.job.name)
                return False
            log.warning("could not %s in Prefect for %s: %s", write.what, write.job.name, exc)
            if not write.job.created.is_set():
                write.job.broken = True
                write.job.created.set()
        return True


class _Lane:
    """One queue of writes and the thread that empties it (started on demand, ended when idle)."""

    def __init__(self, mirror: PrefectMirror, number: int) -> None:
        self._mirror = mirror
        self._name = f"prefect-mirror-{number}"
        self._writes: collections.deque[_Write] = collections.deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False  # the head of the queue is being written

    def put(self, writes: list[_Write], first: bool = False) -> None:
        """Queue ``writes`` in their order, at the end or (``first``) ahead of everything not being written."""
        with self._changed:
            if first:
                at = 1 if self._writes and self._busy else 0  # the head is being written: right after it
                for offset, write in enumerate(writes):
                    self._writes.insert(at + offset, write)
            else:
                self._writes.extend(writes)
            self._changed.notify()
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` s, no retry later), then let the thread end."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._changed:
            if self._writes:
                log.warning("%d Prefect writes dropped at shutdown", len(self._writes))
                self._writes.clear()

    def _next(self) -> _Write | None:
        with self._changed:
            if not self._writes and not self._closed:
                self._changed.wait(self._mirror.idle_seconds)
            if not self._writes:
                self._thread = None  # under the lock: a put from now on starts a new thread
                return None
            self._busy = True
            return self._writes[0]

    def _loop(self) -> None:
        while (write := self._next()) is not None:
            done = self._mirror._write(write)
            with self._changed:
                self._busy = False
                if done or self._closed:
                    self._writes.popleft()
                else:
                    self._changed.wait(self._mirror.retry_seconds)
