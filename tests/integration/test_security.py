"""SASL and TLS against a real broker: a broker of this module's own (free ports) with a
SASL_PLAINTEXT listener (PLAIN) and a TLS listener (a throwaway CA and server certificate made
with `openssl`); the worker, admin, simulator, replay and the storefront client reach it through
the settings read from the environment; wrong credentials or an untrusted certificate end the
command with a clear error instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from clickstream_tools import broker
from clickstream_tools.replay import read_log, replay
from clickstream_tools.simulator import SimConfig, produce
from stream_app.admin import ensure_topics, topic_specs
from stream_app.client import StorefrontClient
from stream_app.config import Settings
from stream_app.kafka_clients import BrokerUnavailable

from .helpers import read_topic, start_worker

pytestmark = pytest.mark.integration

USER, PASSWORD = "storefront", "s3cret-pass"


def _certificates(d: Path) -> tuple[Path, Path]:
    """(CA certificate, server key + certificate PEM for 127.0.0.1), valid for two days."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=clickstream-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")
    pem = d / "server.pem"
    pem.write_text((d / "server.key").read_text() + (d / "server.crt").read_text())
    return d / "ca.pem", pem


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return _certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def sasl_broker(certs):
    data_dir = Path(tempfile.mkdtemp(prefix="clickstream-sasl-kafka-"))
    try:
        info = broker.up(data_dir, port=broker.free_port(), sasl_users={USER: PASSWORD, "admin": "adm1n"},
                         ssl_pem=certs[1])
    except broker.BrokerError as e:
        pytest.fail(f"could not start a broker with a SASL listener: {e}")
    try:
        yield info
    finally:
        broker.down(data_dir)


def _security_env(password: str = PASSWORD) -> dict[str, str]:
    return {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": password}


def _env(bootstrap: str, password: str = PASSWORD) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **_security_env(password)}


def test_settings_from_env_reach_kafka_python_and_faust():
    s = Settings.from_env(_env("h:1"))
    kw = s.kafka_client_kwargs()
    assert kw == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                  "sasl_plain_username": USER, "sasl_plain_password": PASSWORD}
    creds = s.faust_credentials()
    assert (creds.username, creds.password, creds.mechanism.value) == (USER, PASSWORD, "PLAIN")
    assert PASSWORD not in repr(s)
    assert Settings.from_env({}).kafka_client_kwargs() == {}
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME"):
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})


def test_worker_with_sasl_credentials_processes_events_end_to_end(sasl_broker, namespace, tmp_path,
                                                                   registry):
    s = Settings.from_env(_env(sasl_broker.sasl_bootstrap)).with_(namespace=namespace, partitions=2)
    ensure_topics(s.bootstrap, topic_specs(s), s.kafka_client_kwargs())  # admin over SASL
    cfg = SimConfig(users=20, events=200, seed=5)
    counts = produce(s.bootstrap, s.topics.events, cfg, client_kwargs=s.kafka_client_kwargs())
    # replay over SASL too: 5 more events for a user of their own
    log = tmp_path / "more.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps({"event_id": f"r{i}", "user_id": "replayed-user",
                                             "ts": 1_767_225_600.0 + i, "action": "view",
                                             "item_id": "i1"}) for i in range(5)))
    assert replay(s, read_log(log), None).sent == 5
    worker = start_worker(sasl_broker.sasl_bootstrap, namespace, tmp_path,
                          env={**_security_env(), "CLICKSTREAM_PARTITIONS": "2"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    try:
        want = counts["valid"] + 5
        preds = read_topic(sasl_broker.bootstrap, s.topics.next_action, want, timeout=120,
                           distinct=lambda r: orjson.loads(r.value)["event_id"])
        ids = {orjson.loads(r.value)["event_id"] for r in preds}
        assert len(ids) == want and {f"r{i}" for i in range(5)} <= ids
    finally:
        worker.stop()


def test_wrong_password_fails_clearly(sasl_broker, namespace, tmp_path, registry):
    bad = Settings.from_env(_env(sasl_broker.sasl_bootstrap, password="wrong")).with_(namespace=namespace)
    with pytest.raises(BrokerUnavailable, match="authentication failed"):
        ensure_topics(bad.bootstrap, topic_specs(bad), bad.kafka_client_kwargs())
    env = dict(os.environ, **_env(sasl_broker.sasl_bootstrap, password="wrong"),
               CLICKSTREAM_NAMESPACE=namespace)
    for args in (["worker", "--model-dir", str(registry), "--data-dir", str(tmp_path / "w"),
                  "--web-port", str(broker.free_port()), "--device", "cpu"],
                 ["simulate", "--events", "10"]):
        proc = subprocess.run([sys.executable, "-m", "stream_app.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "authentication failed" in proc.stderr and "Invalid username or password" in proc.stderr


def test_tls_listener_with_the_ca_from_the_environment(sasl_broker, certs, namespace, tmp_path, registry):
    env = {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(certs[0])}
    s = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": sasl_broker.ssl_bootstrap, **env}).with_(
        namespace=namespace, partitions=2)
    assert s.kafka_client_kwargs()["ssl_context"].check_hostname
    ensure_topics(s.bootstrap, topic_specs(s), s.kafka_client_kwargs())
    events = [{"event_id": f"t{i}", "user_id": f"tls{i % 3}", "ts": 1_767_225_600.0 + i,
               "action": "view", "item_id": f"i{i}"} for i in range(12)]
    with StorefrontClient(s) as client:
        assert client.send_batch(events) == []
        assert client.flush().delivered == 12
    worker = start_worker(sasl_broker.ssl_bootstrap, namespace, tmp_path,
                          env={**env, "CLICKSTREAM_PARTITIONS": "2"},
                          extra_args=["--model-dir", str(registry), "--device", "cpu"])
    try:
        preds = read_topic(sasl_broker.bootstrap, s.topics.churn, 12, timeout=120,
                           distinct=lambda r: orjson.loads(r.value)["event_id"])
        assert {orjson.loads(r.value)["event_id"] for r in preds} == {e["event_id"] for e in events}
    finally:
        worker.stop()
    untrusted = s.with_(ssl_cafile="")  # the system's CAs do not know the test CA
    with pytest.raises(BrokerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        ensure_topics(untrusted.bootstrap, topic_specs(untrusted), untrusted.kafka_client_kwargs())
