"""Example downstream consumer: the latest prediction per user, served over HTTP.

    python examples/latest_predictions.py --port 8080      # settings from the environment
    curl http://127.0.0.1:8080/users/u42

It reads both prediction topics (next action and churn) with a consumer group of its own, keeps
per user the prediction for the newest event (by event time), ignores copies it has already seen
(deduplicated on (event_id, model_version): the service delivers at least once, and a redelivered
event comes again, flagged `replayed`), and answers

    GET /users/<user_id>   200 {"user_id", "next_action": {...} | null, "churn": {...} | null}, 404
    GET /health            200 {"users": N, "applied": N, "duplicates": N}

With CLICKSTREAM_PSEUDONYM_KEY set (the worker publishes pseudonyms), /users/<raw id> is looked
up by its pseudonym, so the recommender team can keep asking with the ids it knows.

State lives in memory (a restart reads the topics again from the group's committed offsets; give
it a fresh --group to rebuild from the beginning). Standard library HTTP server; kafka-python.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from stream_app.config import Settings
from stream_app.pseudonymisation import from_key

log = logging.getLogger("latest_predictions")
KINDS = ("next_action", "churn")


class LatestPredictions:
    """user id -> {"next_action": payload, "churn": payload}, the newest event's per kind.
    Thread-safe: the consumer thread applies, HTTP threads read."""

    def __init__(self, seen_max: int = 1_000_000) -> None:
        self.users: dict[str, dict[str, dict[str, Any]]] = {}
        self.seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # bounded, oldest out
        self.seen_max = seen_max
        self.applied = 0
        self.duplicates = 0
        self.lock = threading.Lock()

    def apply(self, kind: str, prediction: dict[str, Any]) -> bool:
        """True when the prediction is new and now the user's latest of its kind."""
        ident = (kind, prediction["event_id"], prediction["model_version"])
        with self.lock:
            if ident in self.seen:
                self.duplicates += 1
                return False
            self.seen[ident] = None
            if len(self.seen) > self.seen_max:
                self.seen.popitem(last=False)
            latest = self.users.setdefault(prediction["user_id"], {})
            have = latest.get(kind)
            if have is not None and have["event_ts"] > prediction["event_ts"]:
                return False  # an older event arriving late (another partition's order, a replay)
            latest[kind] = prediction
            self.applied += 1
            return True

    def get(self, user_id: str) -> dict[str, Any] | None:
        with self.lock:
            latest = self.users.get(user_id)
            return None if latest is None else {"user_id": user_id,
                                                **{k: latest.get(k) for k in KINDS}}

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"users": len(self.users), "applied": self.applied, "duplicates": self.duplicates}


def consume(settings: Settings, store: LatestPredictions, group: str, stop: threading.Event) -> None:
    from kafka import KafkaConsumer

    topics = {settings.topics.next_action: "next_action", settings.topics.churn: "churn"}
    consumer = KafkaConsumer(*topics, bootstrap_servers=settings.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=True,
                             client_id="latest-predictions", **settings.kafka_client_kwargs())
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    try:
                        store.apply(topics[r.topic], orjson.loads(r.value))
                    except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                        log.warning("skipping an unreadable prediction at %s[%d]@%d: %r",
                                    r.topic, r.partition, r.offset, e)
    finally:
        consumer.close()


def make_server(store: LatestPredictions, host: str, port: int,
                lookup_key: Any = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server interface
            if self.path == "/health":
                return self._send(200, store.stats())
            if self.path.startswith("/users/") and len(self.path) > len("/users/"):
                from urllib.parse import unquote

                user = unquote(self.path[len("/users/"):])
                found = store.get(lookup_key(user) if lookup_key else user)
                if found is not None:
                    return self._send(200, found)
                return self._send(404, {"error": f"no prediction for user {user!r} yet"})
            return self._send(404, {"error": "GET /users/<user_id> or /health"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--group", default="latest-predictions", help="Kafka consumer group")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = Settings.from_env()
    pseudonymiser = from_key(settings.pseudonym_key)
    store = LatestPredictions()
    stop = threading.Event()
    consumer = threading.Thread(target=consume, args=(settings, store, args.group, stop), daemon=True)
    consumer.start()
    server = make_server(store, args.host, args.port, pseudonymiser.pseudonym if pseudonymiser else None)
    log.info("serving the latest predictions from %s and %s on http://%s:%d/users/<user_id>",
             settings.topics.next_action, settings.topics.churn, args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
        consumer.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
