"""Which env values of a job are secrets, the forms they may take in a log, and the masker that hides them.

A secret is the value of an env var whose name matches one of the worker's secret patterns (``fnmatch``,
case-insensitive) and none of its exclusions, or whose name the job lists in ``maskedEnv``. Masking runs
line by line, so what is masked is:

* each line of the value (a PEM key is many lines; each is masked where it appears);
* the value's base64 forms (standard and URL-safe, with and without ``=`` padding), of the value and of the
  value followed by a newline (``echo "$X" | base64``), the 76-character lines ``base64`` wraps a long
  encoding into, and the parts of the encoding that do not depend on neighbouring bytes when the value is
  encoded inside a longer text (``user:$TOKEN`` in a basic-auth header);
* its URL-encoded forms (``quote`` with and without ``/`` kept, ``quote_plus``).

A value or line shorter than the minimum length is not masked (it would hide common text): the job log
gets a warning naming the variable, never the value. Stdlib only: the log benchmark imports this without
Prefect.
"""

from __future__ import annotations

import base64
import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, quote_plus

MASK = "[MASKED]"
_BASE64_LINE = 76  # busybox and coreutils `base64` wrap their output at 76 characters
# A form cut out of a longer encoding is kept only from this length: shorter ones would mask ordinary words.
_MIN_PARTIAL_FORM = 8


def is_secret_name(name: str, patterns: Iterable[str], exclude: Iterable[str] = ()) -> bool:
    """Whether an env var name looks secret: it matches a pattern and no exclusion (case-insensitive)."""
    upper = name.upper()
    return (any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)
            and not any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in exclude))


def secret_names(env: Mapping[str, str] | None, patterns: Iterable[str], exclude: Iterable[str] = (),
                 masked_env: Iterable[str] | None = None) -> list[str]:
    """Names of the env vars whose values are secrets (the job's ``maskedEnv`` included), in env order."""
    listed = set(masked_env or ())
    patterns, exclude = list(patterns), list(exclude)
    return [name for name in (env or {}) if name in listed or is_secret_name(name, patterns, exclude)]


@dataclass(frozen=True)
class SecretScan:
    """What to mask for one job, and the variables left (partly) unmasked because too short."""

    needles: frozenset[str]
    too_short: tuple[str, ...]

    def warnings(self, min_length: int) -> list[str]:
        """Log notes for the values not masked: they name the variable, never the value."""
        return [f"warning: secret env var {name} has a value (or a line of it) shorter than {min_length} "
                f"characters: not masked" for name in self.too_short]


class SecretSettings(Protocol):
    """The worker settings that decide what is a secret (``core.settings.Settings`` has them)."""

    secret_env_patterns: list[str]
    secret_env_exclude: list[str]
    secret_min_length: int


def scan_job_env(env: Mapping[str, str] | None, masked_env: Iterable[str] | None,
                 settings: SecretSettings) -> SecretScan:
    """:func:`scan_secrets` of a job's env and ``maskedEnv`` under the worker's settings."""
    return scan_secrets(env, settings.secret_env_patterns, settings.secret_env_exclude, masked_env,
                        settings.secret_min_length)


def scan_secrets(env: Mapping[str, str] | None, patterns: Iterable[str], exclude: Iterable[str] = (),
                 masked_env: Iterable[str] | None = None, min_length: int = 4) -> SecretScan:
    """Every string to mask for this env (see the module docstring), and the variables too short to mask."""
    needles: set[str] = set()
    too_short: list[str] = []
    for name in secret_names(env, patterns, exclude, masked_env):
        value = (env or {})[name]
        lines = [line.rstrip("\r") for line in value.splitlines()]
        if any(line.strip() and len(line) < min_length for line in lines):
            too_short.append(name)
        needles.update(line for line in lines if len(line) >= min_length)
        if len(value) >= min_length:
            needles.update(form for form in encoded_forms(value) if len(form) >= min_length)
    return SecretScan(frozenset(needles), tuple(too_short))


def encoded_forms(value: str) -> set[str]:
    """The base64 and URL-encoded forms of ``value`` that differ from it (see the module docstring)."""
    data = value.encode()
    forms = {quote(value), quote(value, safe=""), quote_plus(value)}
    for raw in (data, data + b"\n"):
        standard = base64.b64encode(raw).decode()
        urlsafe = base64.urlsafe_b64encode(raw).decode()
        forms.update((standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")))
        if len(standard) > _BASE64_LINE:
            forms.update(standard[i:i + _BASE64_LINE] for i in range(0, len(standard), _BASE64_LINE))
    for core in _embedded_base64(data):
        if len(core) >= _MIN_PARTIAL_FORM:
            forms.update((core, core.replace("+", "-").replace("/", "_")))
    forms.discard(value)
    return forms


def _embedded_base64(data: bytes) -> list[str]:
    """The characters of the encoding of ``data`` that depend on ``data`` only, at each of the three
    alignments it can have inside a longer encoded text."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode().rstrip("=")
        head = (shift * 8 + 5) // 6  # characters holding bits of the bytes before the value
        tail = (shift + len(data)) * 8 // 6  # characters made only of bits up to the value's end
        cores.append(encoded[head:tail])
    return cores


_LONG_TEXT = 1024


class Masker:
    """Replaces every needle with ``[MASKED]`` in one pass; falsy when there is nothing to mask.

    The needles become one regular expression shaped as a prefix tree (``abc(?:d|ef)``), so the engine
    tries one branch per character of the text instead of every needle in turn; at each position the
    longest needle wins.
    """

    def __init__(self, needles: Iterable[str]) -> None:
        words = sorted({needle for needle in needles if needle})
        self._pattern = _compile(words) if words else None
        self._shortest = min(map(len, words), default=0)
        self._needles = sorted(words, key=len, reverse=True)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        """``text`` with every needle replaced by ``[MASKED]``."""
        if self._pattern is None or len(text) < self._shortest:
            return text
        # On long pieces (a 64 KiB line) the regex engine steps through every character, ~4x slower than a
        # substring search per needle; on short lines the regex is the cheaper of the two.
        if len(text) > _LONG_TEXT and not any(needle in text for needle in self._needles):
            return text
        return self._pattern.sub(MASK, text)


def _compile(words: list[str]) -> re.Pattern[str]:
    try:
        return re.compile(_trie_pattern(words))
    except RecursionError:  # needles nested hundreds deep (a, aa, aaa, ...): a flat alternation, longest first
        return re.compile("|".join(re.escape(word) for word in sorted(words, key=len, reverse=True)))


def _trie_pattern(words: list[str]) -> str:
    """A regex matching exactly ``words``, longest first, as a path-compressed prefix tree."""
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return _branch(trie)


def _branch(node: dict[str, dict]) -> str:
    ends_here = "" in node
    alternatives = []
    for char, child in sorted(node.items()):
        if not char:
            continue
        run = char
        while len(child) == 1 and "" not in child:  # a chain of single children becomes one literal
            (next_char, child), = child.items()
            run += next_char
        alternatives.append(re.escape(run) + _branch(child))
    if not alternatives:
        return ""
    body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    if ends_here:  # greedy: the longer word is tried first, the shorter one is the fallback
        return f"(?:{body})?" if len(alternatives) == 1 else body + "?"
    return body
