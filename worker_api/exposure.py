"""Who can reach the worker API: loopback only, protected by a token, or openly exposed by the operator's choice.

Anyone who reaches the API can run any image with any script on this host, so ``serve`` refuses to listen
beyond loopback without ``WORKER_API_TOKEN`` unless the operator opts out (``--insecure`` or
``WORKER_INSECURE=true``).
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

INSECURE_WARNING = ("WARNING: the worker API listens beyond loopback WITHOUT a token (insecure mode): anyone who "
                    "reaches it can run any image with any script on this host. Set WORKER_API_TOKEN.")


class Exposure(StrEnum):
    """How the API is reachable; decided once at start from the listen address and the settings."""

    LOOPBACK = "loopback"  # no token, only this host can call
    TOKEN = "token"  # a token is required (wherever it listens)
    INSECURE = "insecure"  # beyond loopback without a token: the operator opted out
    REFUSED = "refused"  # beyond loopback without a token and without the opt-out: do not start


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1; any other name or address (0.0.0.0, ::) counts as exposed.

    Other host names are not resolved: what a name resolves to can change, so it counts as exposed.
    """
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def classify(host: str, token_set: bool, insecure: bool) -> Exposure:
    """The exposure of an API listening on ``host``."""
    if token_set:
        return Exposure.TOKEN
    if is_loopback(host):
        return Exposure.LOOPBACK
    return Exposure.INSECURE if insecure else Exposure.REFUSED


def refusal_message(host: str, port: int) -> str:
    """What ``serve`` prints when it refuses to start (exposure ``REFUSED``)."""
    return (f"cicd-worker: refusing to listen on {host}:{port} without WORKER_API_TOKEN: anyone who reaches this "
            "port could run any image with any script on this host.\n"
            "  Set WORKER_API_TOKEN=<a long random token> (callers send 'Authorization: Bearer <token>'),\n"
            "  or listen on loopback only (--host 127.0.0.1, the default),\n"
            "  or opt out at your own risk with --insecure or WORKER_INSECURE=true.")
