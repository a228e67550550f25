"""LineSplitter: lines and pieces out of byte chunks, cut at character boundaries, in linear time."""

from __future__ import annotations

import random
import struct
import time

import pytest

from executors.output import FrameReader, LineSplitter


def split(data: bytes, max_chars: int, chunk: int) -> list[str]:
    lines: list[str] = []
    splitter = LineSplitter(lines.append, max_chars)
    for offset in range(0, len(data), chunk):
        splitter.feed(data[offset:offset + chunk])
    splitter.close()
    assert splitter.total_bytes == len(data)
    return lines


def expected(data: bytes, max_chars: int) -> list[str]:
    """Split the whole text at once: every line, lines over the limit in pieces of ``max_chars``."""
    out: list[str] = []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        text = line.decode("utf-8", errors="replace")
        out.extend([text[i:i + max_chars] for i in range(0, len(text), max_chars)] or [""])
    return out


@pytest.mark.parametrize("seed", range(40))
def test_pieces_are_the_same_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(["a", "é", "€", "😀", "\n"]) for _ in range(rng.randint(0, 3000)))
    max_chars = rng.randint(1, 50)
    assert split(text.encode(), max_chars, rng.randint(1, 64)) == expected(text.encode(), max_chars)


def test_no_character_is_cut_and_undecodable_bytes_become_replacement_characters() -> None:
    data = "€".encode() * 1000 + b"\xff\xfe" + "😀".encode() * 500
    lines = split(data, 7, 5)
    assert all(len(line) <= 7 for line in lines)
    assert "".join(lines) == "€" * 1000 + "\ufffd\ufffd" + "😀" * 500


def test_a_64_mib_line_without_newline_costs_well_under_a_second() -> None:
    lines: list[int] = []
    splitter = LineSplitter(lambda line: lines.append(len(line)), 65536)
    chunk = b"a" * 16384
    started = time.process_time()
    for _ in range(4096):
        splitter.feed(chunk)
    splitter.close()
    spent = time.process_time() - started
    print(f"64 MiB without newline: {spent:.3f} s CPU")
    assert lines == [65536] * 1024
    assert spent < 1.0  # the old splitter re-copied the pending bytes on every chunk: 107 s


def frames(*payloads: bytes) -> bytes:
    return b"".join(struct.pack(">BxxxL", 1 + i % 2, len(p)) + p for i, p in enumerate(payloads))


@pytest.mark.parametrize("seed", range(10))
def test_frame_reader_joins_the_payloads_however_the_stream_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.randint(0, 300)) for _ in range(rng.randint(0, 50))]
    stream = frames(*payloads)
    reader = FrameReader()
    cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 30))))
    got = b"".join(reader.payload(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True))
    assert got == b"".join(payloads)


def test_a_batch_sink_gets_one_call_per_block() -> None:
    class Batches:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def __call__(self, line: str) -> None:
            self.calls.append([line])

        def lines(self, lines: list[str]) -> None:
            self.calls.append(lines)

    sink = Batches()
    splitter = LineSplitter(sink, 65536)
    splitter.feed(b"one\ntwo\nthr")
    splitter.feed(b"ee\nfour")
    splitter.close()
    assert sink.calls == [["one", "two"], ["three"], ["four"]]
