"""LineSplitter: lines and pieces out of byte chunks, cut at character boundaries, in linear time."""

from __future__ import annotations

import random
import time

import pytest

from executors.output import LineSplitter


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
