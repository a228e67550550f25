"""JobLog fed in batches: the same text as line by line, masking in any position, tail, chunks, Prefect cap,
listeners, and the shipper's back-pressure. No Prefect server, no engine."""

from __future__ import annotations

import hashlib
import logging
import random
import threading

import pytest

from executors.output import LineSplitter
from flows.job_log import WORKER_PREFIX, JobLog
from tests.support import wait_for

SECRET = "s3cr3t-T0KEN-value"


def fed(data: bytes, block: int, **options: object) -> JobLog:
    """A JobLog fed ``data`` through a LineSplitter in blocks of ``block`` bytes (as the docker executor does)."""
    log = JobLog(**options)  # type: ignore[arg-type]
    splitter = LineSplitter(log, 50)
    for offset in range(0, len(data), block):
        splitter.feed(data[offset:offset + block])
    splitter.close()
    return log


def shipped(log: JobLog) -> list[str]:
    lines: list[str] = []
    while (chunk := log.take_chunk()) is not None:
        lines.extend(chunk[2])
    return lines


@pytest.mark.parametrize("seed", range(10))
def test_batches_give_the_same_log_as_lines_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    words = ["a", "é", "😀", "\n", SECRET, SECRET[:5], " ", "\n\n"]
    data = "".join(rng.choice(words) for _ in range(rng.randint(0, 4000))).encode()
    options = {"secrets": [SECRET], "tail_bytes": rng.randint(1, 3000), "chunk_bytes": 1024, "max_line_chars": 50}
    batched = fed(data, rng.randint(1, 700), **options)
    one_by_one = JobLog(**options)  # type: ignore[arg-type]
    splitter = LineSplitter(one_by_one.line, 50)  # a plain callable: one call per line
    splitter.feed(data)
    splitter.close()
    lines = shipped(one_by_one)
    assert shipped(batched) == lines
    assert all(SECRET not in line for line in lines)
    assert (batched.total_bytes, batched.total_lines, batched.sha256) == (
        one_by_one.total_bytes, len(lines), hashlib.sha256("".join(f"{x}\n" for x in lines).encode()).hexdigest())
    assert batched.text_for_status() == one_by_one.text_for_status()


def test_a_secret_is_masked_in_every_position_of_a_block_and_chunks_are_ordered() -> None:
    data = b"".join(f"{i} {'x' * (i % 7)}{SECRET}{'y' * (i % 5)}\n".encode() for i in range(2000))
    log = fed(data, 4096, secrets=[SECRET], chunk_bytes=4096)
    offset, seq = 0, 0
    lines: list[str] = []
    while (chunk := log.take_chunk()) is not None:
        assert (chunk[0], chunk[1]) == (seq, offset)
        seq, offset = seq + 1, offset + sum(len(line.encode()) + 1 for line in chunk[2])
        lines.extend(chunk[2])
    assert len(lines) == 2000 and all(line.endswith(f"[MASKED]{'y' * (i % 5)}") for i, line in enumerate(lines))
    assert offset == log.total_bytes
    assert SECRET not in log.text_for_status()


def test_a_note_holding_a_newline_stays_one_line_even_with_a_secret() -> None:
    log = JobLog(secrets=[SECRET])
    log.lines(["first", "second"])
    log.note(f"two\nparts {SECRET}")
    assert shipped(log) == ["first", "second", f"{WORKER_PREFIX} two\nparts [MASKED]"]


def test_the_tail_keeps_the_last_whole_lines_that_fit() -> None:
    log = JobLog(tail_bytes=25)
    log.lines([f"line {i}" for i in range(10)])  # 7 bytes each with the newline
    log.lines(["last"])
    assert log.text_for_status() == (f"{WORKER_PREFIX} log truncated: first 56 of 75 bytes omitted\n"
                                     "line 8\nline 9\nlast\n")


def test_prefect_gets_large_records_up_to_its_cap_then_one_note() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test-job-log-prefect")
    logger.propagate = False
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    log = JobLog(prefect_max_bytes=10_000)
    log.forward_to(logger)
    for block in range(20):
        log.lines([f"{block:02d} {'z' * 95}" for _ in range(10)])  # 99 bytes a line with its newline
    log.flush()
    sent = "\n".join(records).split("\n")
    # As line by line: every line while the bytes sent stay under the cap (101 * 99 < 10,000), then the note.
    assert sent[:-1] == [f"{b:02d} {'z' * 95}" for b in range(20) for _ in range(10)][:101]
    assert sent[-1].startswith(f"{WORKER_PREFIX} further output not sent to Prefect")
    assert len(records) < 10  # batched, not a record per line


def test_a_listener_gets_masked_batches_in_order_and_one_that_raises_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    log = JobLog(secrets=[SECRET], max_line_chars=10)
    seen: list[list[str]] = []
    calls = []

    def broken(lines: list[str]) -> None:
        calls.append(lines)
        raise RuntimeError("viewer gone")

    log.add_listener(seen.append)
    log.add_listener(broken)
    log.lines(["one", f"two {SECRET}"])
    log.note("done")
    assert seen == [["one", "two [MASKE", "D]"], ["[cicd-work", "er] done"]]
    assert [line for batch in seen for line in batch] == shipped(log)
    assert len(calls) == 1  # dropped after its first failure
    assert sum("viewer gone" in r.getMessage() or "listener" in r.getMessage() for r in caplog.records) == 1


def test_a_reader_waits_for_the_shipper_instead_of_piling_up_lines() -> None:
    log = JobLog(chunk_bytes=1024)
    log.ship_in_chunks()
    done = threading.Event()
    batch = ["x" * 99] * 100  # 10,000 bytes a batch

    def reader() -> None:
        for _ in range(300):
            log.lines(batch)
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert not done.wait(0.3)  # held back: about 1 MiB pending at most, whatever the chunk size
    assert (1 << 20) <= log.total_bytes <= (1 << 20) + 10_000
    log.take_chunk()
    wait_for(lambda: log.total_bytes > (1 << 20) + 10_000, 5, 0.01, "the reader going on after a take")
    log.ship_in_chunks(False)  # the shipper stops: nobody waits for it any more
    thread.join(5)
    assert done.is_set() and log.total_lines == 30_000


def test_a_shipper_aims_at_larger_chunks_up_to_the_maximum_and_back() -> None:
    log = JobLog(chunk_bytes=1024, max_chunk_bytes=8192)
    for _ in range(40):
        log.lines(["y" * 499])  # 500 bytes a batch
    first = log.take_chunk()
    log.aim(1 << 20)  # more than the maximum: the maximum
    assert log.chunk_full.is_set()  # 18,500 bytes wait, more than 8,192
    second = log.take_chunk()
    log.aim(0)  # less than chunk_bytes: chunk_bytes
    third = log.take_chunk()
    assert first is not None and second is not None and third is not None
    assert [len(chunk[2]) for chunk in (first, second, third)] == [3, 17, 3]  # whole batches up to the aim
    assert [chunk[:2] for chunk in (first, second, third)] == [(0, 0), (1, 1500), (2, 10_000)]
    log.aim(8192)
    assert log.chunk_full.is_set()  # the 8,500 bytes left
    log.take_chunk()
    log.lines(["z" * 499])
    assert not log.chunk_full.is_set() and log.take_chunk() == (4, 20_000, ["z" * 499])
