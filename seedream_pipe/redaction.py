"""Keeping the API token out of everything seedream-pipe shows or writes.

A server may echo the token back in an error: whole or cut short, in any letter case, escaped
for a URL or HTML, or in base64 (a debug dump of the request's headers). `redact` cuts it out of
a text in every form it can find exactly, and withholds the whole text (`WITHHELD`) when a form
it found cannot be cut cleanly. Every message, log line, state row and report that might hold a
server's text passes through it.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, unquote, unquote_plus

#: A token shorter than this is a stand-in (the simulator takes any, e.g. RUNCOMFY_TOKEN=x), not
#: a secret: looking for it would match by chance and mangle every message ("inde***").
MIN_SECRET_LEN = 6
#: The shortest run of a token's characters that `redact` cuts out on its own.
MIN_PIECE_LEN = 8
#: The same in the token's base64: as many characters as carry MIN_PIECE_LEN bytes, 6 bits each.
MIN_BASE64_PIECE_LEN = math.ceil(MIN_PIECE_LEN * 8 / 6)


@functools.lru_cache(maxsize=8)
def _forms(secret: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """A secret as a server may echo it: as is, percent-encoded (in a URL or a form, `/` kept
    or not), escaped in JSON or in HTML, in base64 alone or as the header's whole value (a
    debug dump of `Authorization: Bearer ...`); each as its case-folded text and the pattern
    that finds it in any case. Longest first, so that no form is left half replaced by a shorter
    one."""
    # (a byte of the token that is not UTF-8, a lone surrogate as Python reads it from the
    # environment, is escaped as that byte: quote() refused it, UnicodeEncodeError)
    kept = {"errors": "surrogatepass"}
    forms = {
        secret,
        quote(secret, safe="", **kept),
        quote(secret, **kept),
        quote_plus(secret, safe="", **kept),
        quote_plus(secret, **kept),
        json.dumps(secret)[1:-1],
        html.escape(secret),
        *_base64s(_bytes(secret)),
        *_base64s(b"Bearer " + _bytes(secret)),
    }
    return tuple(
        (form.casefold(), re.compile(re.escape(form), re.IGNORECASE))
        for form in sorted(forms, key=len, reverse=True)
    )


def _bytes(secret: str) -> bytes:
    """The secret as sent (UTF-8; never an error, whatever the string)."""
    return secret.encode("utf-8", "surrogatepass")


#: base64's URL-safe alphabet, from the standard one.
_URLSAFE = str.maketrans("+/", "-_")


def _base64s(data: bytes) -> set[str]:
    """`data` in base64, in the standard and the URL-safe alphabet, padded and not."""
    padded = base64.b64encode(data).decode("ascii")
    return {form for alphabet in (padded, padded.translate(_URLSAFE)) for form in (alphabet, alphabet.rstrip("="))}


def _in_base64(secret: str) -> set[str]:
    """What a base64 text holding the secret shows of it, in either alphabet. Base64 writes 6
    bits a character, so a character holds bits of one byte or of two: the secret's bytes fall
    into characters in one of three ways, and in each, the characters whose bits are all the
    secret's read the same whatever comes before and after it (`Basic` + `user:<token>`, a JSON
    body in a JWT). Where that is known (nothing, or `Bearer `, before it; the end after it), the
    characters it shares bits with show those bits too."""
    data = _bytes(secret)
    shown = set()
    for lead in range(3):
        encoded = base64.b64encode(bytes(lead) + data).decode("ascii")
        shown.add(encoded[-(-8 * lead // 6) : 8 * (lead + len(data)) // 6])
    for before in (b"", b"Bearer "):
        shown.add(base64.b64encode(before + data).decode("ascii").rstrip("=")[8 * len(before) // 6 :])
    return shown | {string.translate(_URLSAFE) for string in shown}


#: A decimal character reference of 8 digits or more (leading zeros aside), too large for any
#: character: HTML reads it as U+FFFD, but `html.unescape` reads its digits with int(), which
#: refuses more than 4300 of them (ValueError).
_LONG_CHARREF = re.compile(r"&#([0-9]{8,})")


def _html_unescape(text: str) -> str:
    """`html.unescape(text)`, whatever the text: a server's `&#99...9;` of 5000 digits raised
    ValueError out of `redact`."""

    def readable(match: re.Match[str]) -> str:
        digits = match.group(1).lstrip("0") or "0"
        return "&#" + (digits if len(digits) < 8 else "1114112")  # (0x110000: no character)

    return html.unescape(_LONG_CHARREF.sub(readable, text))


def _decoded(text: str) -> set[str]:
    """`text` as a browser or a URL parser would read it, each way that reads it otherwise than
    as it is: whatever way a server encoded the token when it echoed it (`&#45;` entities, say),
    it is plain in one of these."""
    unescaped = _html_unescape(text) if "&" in text else text
    return {unquote(text), unquote_plus(text), unescaped, unquote_plus(unescaped)} - {text}


#: What stands for a text that still holds the token in an encoding `redact` cannot cut out.
WITHHELD = "[the server's text is not shown: it echoed the token]"


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each secret in `text` with a fixed marker, in any letter case
    (a server that shouts `BEARER SECRET-...` back gives the token away all the same) and in the
    forms a server may echo it in (`Bearer%20tok%2Ben`, base64), whole or not: any run of
    MIN_PIECE_LEN or more of its characters, or of its base64 that carries as many bytes, as they
    are or escaped (`tok%2Den-ab`). A text still holding such a run in a way that cannot be cut
    out exactly is withheld whole (WITHHELD)."""
    folded = text.casefold()
    for secret in secrets:
        if not secret or len(secret) < MIN_SECRET_LEN:
            continue
        for form, pattern in _forms(secret):
            if form in folded:
                text = pattern.sub("***", text)
                folded = text.casefold()
                if form in folded:
                    # (written with a character that folds to two, `SS` for `ß`, which
                    # IGNORECASE does not match: not cut out, so withheld)
                    return WITHHELD
        # The token cut short (at a server's length limit) or split gives most of it away all
        # the same: any run of MIN_PIECE_LEN or more of its characters goes too (and any run of
        # its base64 that carries as many bytes), escaped or not (cut short, `tok%2Den-ab` is
        # none of the forms above). What can be left is shorter pieces, each far too short to
        # guess the rest from.
        sought = _sought(secret)
        text = _cut_runs(text, sought)
        folded = text.casefold()
        # encoded in a way no run can be cut out of exactly (a multi-byte character, say): all
        # withheld. (Runs of its characters only: base64 has no %, & or ;, so what `_cut_runs`
        # read through escapes leaves none of it for these readings to find.)
        of_characters, _of_base64 = sought
        encoded = "%" in text or "&" in text or "+" in text
        if encoded and any(of_characters.held_in(decoded.casefold()) for decoded in _decoded(text)):
            return WITHHELD
    return text


@dataclass(frozen=True, slots=True)
class _Runs:
    """What `redact` cuts runs of: any run of `shortest` or more characters of one of a few
    strings (case-folded, in `wanted`, joined by NUL)."""

    wanted: str
    shortest: int
    pieces: tuple[str, ...]  # every run of `shortest` characters
    #: a few runs of half as many, spaced so that every piece holds one: looked for first, they
    #: spare a text that holds none of them (almost every text) the search for each piece
    clues: tuple[str, ...]
    pattern: re.Pattern[str]  # any piece, in a case-folded text

    @classmethod
    def of(cls, strings: Iterable[str], shortest: int) -> _Runs:
        folded = {string.casefold() for string in strings}
        kept = sorted(one for one in folded if not any(one != other and one in other for other in folded))
        size, step = shortest // 2, shortest - shortest // 2 + 1
        pieces = tuple(dict.fromkeys(one[i : i + shortest] for one in kept for i in range(len(one) - shortest + 1)))
        clues = tuple(dict.fromkeys(one[i : i + size] for one in kept for i in range(0, len(one) - size + 1, step)))
        # (searched for in the case-folded text: IGNORECASE folds one character to one, so a piece
        # holding `ss` did not match the `ß` it was folded from, and was five times slower)
        pattern = re.compile("|".join(map(re.escape, pieces)))
        return cls("\0".join(kept), shortest, pieces, clues, pattern)

    def held_in(self, folded: str) -> bool:
        """Whether a (case-folded) text holds a run to cut."""
        return any(clue in folded for clue in self.clues) and any(piece in folded for piece in self.pieces)


@functools.lru_cache(maxsize=8)
def _sought(secret: str) -> tuple[_Runs, _Runs]:
    """The runs `redact` cuts out of a secret: of its characters, and of its base64."""
    return _Runs.of([secret], MIN_PIECE_LEN), _Runs.of(_in_base64(secret), MIN_BASE64_PIECE_LEN)


#: How many times over `redact` reads the escapes in a text: `%252D` is `-` escaped twice (a URL
#: quoted into another one's query).
ESCAPED_READINGS = 2
#: An escape that stands for one character: `%2D`, `&#45;`, `&#x2d;`, `&plus;` (or `&#45`, which
#: HTML reads the same).
_ESCAPE = re.compile(r"%[0-9a-f]{2}|&(?:#[0-9]+|#x[0-9a-f]+|[a-z][a-z0-9]{0,31});?", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def _character(escape: str) -> str:
    """The one character an escape (`_ESCAPE`) stands for, or "" if it stands for none alone (a
    byte of a longer character in UTF-8, `&ampx` that HTML reads as `&x`)."""
    if escape[0] == "%":
        return chr(int(escape[1:], 16)) if escape[1] in "01234567" else ""
    char = _html_unescape(escape)
    return char if len(char) == 1 else ""


def _unescaped(text: str) -> tuple[str, list[tuple[int, int]]] | None:
    """`text` with each escape that stands for one character read as that character, and where
    in `text` those escapes are; None if `text` has no such escape."""
    if "%" not in text and "&" not in text:
        return None
    chars: list[str] = []
    escapes: list[tuple[int, int]] = []
    at = 0
    for escape in _ESCAPE.finditer(text):
        if char := _character(escape.group()):
            chars += [text[at : escape.start()], char]
            escapes.append(escape.span())
            at = escape.end()
    if not escapes:
        return None
    chars.append(text[at:])
    return "".join(chars), escapes


def _starts(read: str, escapes: list[tuple[int, int]]) -> list[int]:
    """Where in `read` each character of its reading (`_unescaped`) begins, and last where `read`
    ends: a run found in the reading is cut out of `read` with the escapes it is written in.
    Made only for a reading a run is found in: most are not."""
    starts: list[int] = []
    at = 0
    for start, end in escapes:
        starts += range(at, start + 1)
        at = end
    starts += range(at, len(read) + 1)
    return starts


def _runs(folded: str, runs: _Runs) -> Iterator[tuple[int, int]]:
    """Where a case-folded text holds a run of `runs.shortest` or more characters of
    `runs.wanted`, each as long as it goes on matching: one pass, whatever a server fills its
    answer with."""
    at = 0
    while (found := runs.pattern.search(folded, at)) is not None:
        # (the run as far as it is still a piece of the secret, wherever in it: a secret that
        # repeats a piece goes on matching from either place)
        end = found.end()
        while end < len(folded) and folded[found.start() : end + 1] in runs.wanted:
            end += 1
        yield found.start(), end
        at = end


def _unfolded(text: str, folded: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` of `folded` (`text.casefold()`) as spans of `text`, each taking in the whole of
    every character it has any of (`ß`, folded to `ss`)."""
    if len(folded) == len(text):  # (each character folded to one: the places are the same)
        return spans
    of: list[int] = []  # (the character of `text` each one of `folded` comes from)
    for i, char in enumerate(text):
        of += [i] * len(char.casefold())
    return [(of[start], of[end - 1] + 1) for start, end in spans]


def _cut_runs(text: str, sought: tuple[_Runs, ...]) -> str:
    """`text` with each run of the secret (`_runs`) replaced by the marker, as the text has it
    and then with its escapes read (`_unescaped`, up to ESCAPED_READINGS times over): a run read
    through escapes is cut out of `text` with the escapes it is written in."""
    spans: list[tuple[int, int]] = []
    readings: list[tuple[str, list[tuple[int, int]]]] = []  # (the text each read, its escapes)
    seen = text
    while True:
        folded = seen.casefold()
        if found := [run for runs in sought if runs.held_in(folded) for run in _runs(folded, runs)]:
            found = _unfolded(seen, folded, found)
            maps = [_starts(read, escapes) for read, escapes in reversed(readings)]
            for start, end in found:
                for starts in maps:
                    start, end = starts[start], starts[end]
                spans.append((start, end))
        if len(readings) == ESCAPED_READINGS or (unescaped := _unescaped(seen)) is None:
            break
        readings.append((seen, unescaped[1]))
        seen = unescaped[0]
    if not spans:
        return text
    kept, cut = [], 0
    for start, end in sorted(spans):
        if start >= cut:  # (a run seen again in another reading, or as base64 too, is cut once)
            kept += [text[cut:start], "***"]
        cut = max(cut, end)
    kept.append(text[cut:])
    return "".join(kept)


def holds_secret(text: str, secret: str | None) -> bool:
    """Whether `text` carries `secret`, in any letter case and any form `redact` replaces or
    withholds (a stand-in token never counts): whether `redact` changes it."""
    return secret is not None and redact(text, secret) != text
