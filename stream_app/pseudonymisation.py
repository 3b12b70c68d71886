"""Optional pseudonymisation of user and session ids: a keyed hash (HMAC-SHA256) applied to each
event right after validation, before anything is stored (state rows, changelog) or published
(predictions, normalised events, their keys).

Pure: no I/O. The key comes from Settings.pseudonym_key (CLICKSTREAM_PSEUDONYM_KEY). Without the
key a pseudonym cannot be computed from an id, nor turned back into one; with it, anyone can
compute the pseudonym of an id they already know (which is how a consumer joins predictions to its
users). What it does not protect is in the README (Security and privacy).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace

from .records import Event

PREFIX = "p-"  # tells a pseudonym from a raw id at a glance
HEX_CHARS = 32  # 128 bits of the HMAC: collisions are out of reach for any user base


@dataclass(frozen=True)
class Pseudonymiser:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes (use a random secret)")

    def pseudonym(self, value: str) -> str:
        return PREFIX + hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()[:HEX_CHARS]

    def __call__(self, event: Event) -> Event:
        """The event with user_id and session_id (which often embeds the user id) replaced."""
        return replace(event, user_id=self.pseudonym(event.user_id),
                       session_id=None if event.session_id is None else self.pseudonym(event.session_id))


def from_key(key: str) -> Pseudonymiser | None:
    """None when no key is configured: ids are used as sent."""
    return Pseudonymiser(key.encode()) if key else None
