"""Read-only access to a stopped container's working directory through the engine's archive API.

``GET /containers/{id}/archive?path=P`` streams a tar of P (entries named from P's last part) and
``HEAD`` the same URL gives P's stat; both answer 404 when P does not exist. The engine follows links in
the parent parts of P (inside the container's filesystem) but not in its last part: callers check the
parents with :meth:`ContainerFiles.link_target` first. docker-py's own ``get_archive`` turns the socket
timeout off for the stream; these calls keep the client's timeout on every read, so a stalled engine
ends the collection instead of holding it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import docker
import docker.errors
import requests
from docker.utils import decode_json_header

_STAT_HEADER = "X-Docker-Container-Path-Stat"
_CHUNK_BYTES = 1 << 20


class ContainerFiles:
    """The files under ``working_dir`` of one container, addressed by paths relative to it."""

    def __init__(self, api: docker.APIClient, container_id: str, working_dir: str) -> None:
        self._api = api
        self._url = api._url("/containers/{0}/archive", container_id)
        self.working_dir = working_dir.rstrip("/") or "/"

    def path(self, relative: str) -> str:
        """The absolute path in the container."""
        return posixpath.join(self.working_dir, relative) if relative else self.working_dir

    def link_target(self, relative: str) -> str | None:
        """Where ``relative`` points (absolute, resolved by the engine) when it is a link, else None.

        Raises ``FileNotFoundError`` when it does not exist.
        """
        answer = self._api.head(self._url, params={"path": self.path(relative)}, timeout=self._api.timeout)
        if answer.status_code == 404:
            raise FileNotFoundError(relative)
        self._api._raise_for_status(answer)
        stat = decode_json_header(answer.headers.get(_STAT_HEADER, "e30="))  # "e30=": base64 of "{}"
        return str(stat.get("linkTarget") or "") or None

    def archive(self, relative: str) -> ArchiveStream:
        """The tar stream of ``relative``; ``FileNotFoundError`` when it does not exist. Close it when done."""
        answer = self._api._get(self._url, params={"path": self.path(relative)}, stream=True)
        if answer.status_code == 404:
            answer.close()
            raise FileNotFoundError(relative)
        try:
            self._api._raise_for_status(answer)
        except docker.errors.APIError:
            answer.close()
            raise
        return ArchiveStream(answer)


class ArchiveStream:
    """The chunks of one archive answer; ``close`` ends the HTTP answer even when not read to the end."""

    def __init__(self, answer: requests.Response) -> None:
        self._answer = answer

    def __iter__(self) -> Iterator[bytes]:
        return self._answer.iter_content(_CHUNK_BYTES)

    def close(self) -> None:
        self._answer.close()
