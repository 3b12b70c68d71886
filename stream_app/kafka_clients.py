"""kafka-python clients for the service's tools (admin, storefront client, replay, simulator, demo):
built from Settings, security included, with bounded connection retries and a readable reason when
the broker cannot be reached or refuses us.

Why: kafka-python reports a refused login or a stopped broker only as "Unable to bootstrap" after
its timeout; the real reason (`SaslAuthenticationFailedError: Invalid username or password`) is
only logged. `connect` keeps that reason for the error it raises, does not retry what retrying
cannot fix (a wrong password, an untrusted certificate), and sleeps with a growing backoff
between attempts, so a tool against a stopped broker waits instead of spinning, then stops with
a clear error.

Side effects: network connections; `time.sleep` between attempts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka.errors import KafkaError

from .config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Producer settings that keep a tool quiet against a stopped broker: reconnects back off up to
# 5 s, a send blocks at most 30 s when the buffer is full or metadata is missing, and a record
# not acknowledged within 60 s fails its future instead of waiting for ever.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,  # retries cannot reorder a user's events nor duplicate them
    "linger_ms": 5,
    "reconnect_backoff_ms": 200,
    "reconnect_backoff_max_ms": 5000,
    "max_block_ms": 30_000,
    "delivery_timeout_ms": 60_000,
    "bootstrap_timeout_ms": 10_000,
}


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached, or refused the client (with the reason when known)."""


class _Reasons(logging.Handler):
    """Collects kafka-python's log lines about failed connections while one client connects."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "failed" in msg or "Error" in msg:
            self.lines.append(msg)

    def best(self) -> str | None:
        """The most telling line: a refused login, then a TLS failure, then the last one."""
        for words in (("Authentication",), ("CERTIFICATE", "SSL", "certificate"), ("",)):
            pick = [m for m in self.lines if any(w in m for w in words)]
            if pick:
                return pick[-1][-300:]
        return None

    def auth_failed(self) -> bool:
        return any("AuthenticationFailed" in m or "Authentication failed" in m for m in self.lines)

    def tls_failed(self) -> bool:
        return any("CERTIFICATE_VERIFY_FAILED" in m or "Handshake failed" in m for m in self.lines)


def connect(factory: Callable[[], T], bootstrap: str, what: str, attempts: int = 3,
            backoff_s: float = 1.0, max_backoff_s: float = 10.0,
            sleep: Callable[[float], None] = time.sleep) -> T:
    """`factory()` (a kafka-python client constructor, which connects) with up to `attempts` tries
    and exponential backoff between them. A refused login is not retried. Raises BrokerUnavailable."""
    kafka_log = logging.getLogger("kafka")
    last: Exception | None = None
    reason: str | None = None
    for attempt in range(1, attempts + 1):
        reasons = _Reasons()
        kafka_log.addHandler(reasons)
        try:
            return factory()
        except KafkaError as exc:
            last, reason = exc, reasons.best()
            if reasons.auth_failed():
                raise BrokerUnavailable(f"Kafka at {bootstrap} refused {what}: authentication failed "
                                        f"({reason}); check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD "
                                        "and KAFKA_SASL_MECHANISM") from exc
            if reasons.tls_failed():
                raise BrokerUnavailable(f"TLS with Kafka at {bootstrap} failed for {what} ({reason}); "
                                        "check KAFKA_SSL_CAFILE (the CA that signed the broker's "
                                        "certificate) and that the certificate names this host") from exc
        finally:
            kafka_log.removeHandler(reasons)
        if attempt < attempts:
            delay = min(backoff_s * 2 ** (attempt - 1), max_backoff_s)
            log.warning("Kafka at %s not reachable for %s (attempt %d/%d: %s); retrying in %.1f s",
                        bootstrap, what, attempt, attempts, reason or last, delay)
            sleep(delay)
    raise BrokerUnavailable(f"Kafka at {bootstrap} not reachable for {what} after {attempts} attempts: "
                            f"{reason or last}") from last


def make_producer(settings: Settings, client_id: str, attempts: int = 3, **overrides: Any) -> Any:
    """A connected KafkaProducer with the service's security settings and PRODUCER_DEFAULTS."""
    from kafka import KafkaProducer

    opts = {"bootstrap_servers": settings.bootstrap, "client_id": client_id, **PRODUCER_DEFAULTS,
            **settings.kafka_client_kwargs(), **overrides}
    return connect(lambda: KafkaProducer(**opts), settings.bootstrap, f"producer {client_id}", attempts)


class Deliveries:
    """Acknowledgements of one producer's records, from the send futures' callbacks (which run on
    the producer's I/O thread: only that thread updates acked/failed, only the caller's `sent`).

    `check` raises BrokerUnavailable at the first failed record, or when records are outstanding
    and none was acknowledged for `stall_s`: kafka-python 3's sender spins a full core while it
    holds records for a broker that is gone (measured: 0.96-1.0 of a core; idle, it does not), so
    a stalled producer must be closed, not left retrying for the whole delivery timeout."""

    def __init__(self, bootstrap: str, stall_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap, self.stall_s, self.clock = bootstrap, stall_s, clock
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.first: BaseException | None = None
        self.progress_at = clock()  # last acknowledgement, or when the pipe was last empty

    @property
    def outstanding(self) -> int:
        return self.sent - self.acked - self.failed

    def _ok(self, _metadata: Any) -> None:
        self.acked += 1
        self.progress_at = self.clock()

    def _error(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first is None:
            self.first = exc

    def watch(self, future: Any) -> Any:
        if self.outstanding == 0:
            self.progress_at = self.clock()
        self.sent += 1
        return future.add_callback(self._ok).add_errback(self._error)

    def stalled(self) -> bool:
        return bool(self.outstanding) and self.clock() - self.progress_at > self.stall_s

    def check(self, failures: bool = True) -> None:
        """Raises at a failed record (unless `failures` is False: the caller reports them) or
        when the broker has acknowledged nothing for `stall_s` while records wait."""
        if failures and self.first is not None:
            raise BrokerUnavailable(f"the broker at {self.bootstrap} did not take {self.failed} records "
                                    f"(first: {self.first!r}); {self.acked} were acknowledged")
        if self.stalled():
            raise BrokerUnavailable(f"the broker at {self.bootstrap} acknowledged nothing for "
                                    f"{self.stall_s:.0f} s ({self.outstanding} records waiting, "
                                    f"{self.acked} acknowledged): is it running?")

    def drain(self, producer: Any, failures: bool = True) -> None:
        """Wait until every record sent is acknowledged or failed; raises like `check`."""
        from kafka.errors import KafkaTimeoutError

        while self.outstanding:
            self.check(failures)
            try:
                producer.flush(timeout=1.0)
            except KafkaTimeoutError:
                pass
        self.check(failures)


def close_producer(producer: Any, deliveries: Deliveries) -> None:
    """Close; records still waiting are dropped at once when the broker is gone (no spinning).
    kafka-python's close() flushes first and raises while records wait, before it would force the
    sender closed: force it first (a private attribute; checked, so a newer version only loses
    this shortcut)."""
    from kafka.errors import KafkaTimeoutError

    if deliveries.outstanding:
        sender = getattr(producer, "_sender", None)
        if sender is not None and hasattr(sender, "force_close"):
            sender.force_close()  # aborts the batches it holds: their futures fail
    try:
        producer.close(timeout=5)
    except KafkaTimeoutError:
        log.warning("producer closed with %d records unacknowledged", deliveries.outstanding)
