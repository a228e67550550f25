"""TarReader against archives written by the standard library in the formats the engine uses."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from executors.tar_stream import DIRECTORY, REGULAR, SYMLINK, TarError, TarReader

FILES = {"top/a.txt": b"hello", "top/" + "x" * 150 + "/" + "y" * 120: b"long name",
         "top/\u00e9t\u00e9": b"u" * 700, "top/big": os.urandom(3000), "top/odd-\udcff": b"z"}


def archive(form: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=form, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("top/dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        info = tarfile.TarInfo("top/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/" + "p" * 200
        tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_entries_names_sizes_links_and_data(form: int) -> None:
    files = dict(FILES)
    if form == tarfile.USTAR_FORMAT:  # no room for long or non-ASCII names there
        files = {k: v for k, v in files.items() if len(k) < 100 and k.isascii()}
        data = _ustar(files)
    else:
        data = archive(form)
    reader = TarReader(io.BufferedReader(io.BytesIO(data)))
    seen: dict[str, bytes] = {}
    kinds = {}
    while (entry := reader.next()) is not None:
        kinds[entry.name] = (entry.kind, entry.link)
        if entry.is_file and not entry.name.endswith("big"):  # big: skipped unread
            chunks: list[bytes] = []
            reader.copy_data(chunks.append, 100)
            seen[entry.name] = b"".join(chunks)
    assert seen == {k: v for k, v in files.items() if not k.endswith("big")}
    assert all(kinds[name][0] == REGULAR for name in files)
    if form != tarfile.USTAR_FORMAT:
        assert kinds["top/dir"] == (DIRECTORY, "") and kinds["top/link"] == (SYMLINK, "/etc/" + "p" * 200)


def _ustar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_stream_that_is_not_tar_or_ends_early_is_an_error() -> None:
    with pytest.raises(TarError):
        TarReader(io.BytesIO(b"not a tar archive".ljust(512, b"!"))).next()
    truncated = archive(tarfile.PAX_FORMAT)[:1500]
    reader = TarReader(io.BytesIO(truncated))
    with pytest.raises(TarError):
        while reader.next() is not None:
            pass
