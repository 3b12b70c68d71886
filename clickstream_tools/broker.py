"""A real Apache Kafka broker (KRaft, one combined broker+controller on 127.0.0.1), run from the jars
Apache publishes on Maven Central.

Owns: resolving the broker's classpath with Maven (once per machine, cached outside the clone),
formatting a data dir, starting the JVM in the background, waiting for it to serve clients,
stopping it by its recorded pid. Side effects: files under the data dir and the cache dir,
a `java` child process, network connections to 127.0.0.1.

See ../shared/notes/kafka-broker.md for where every setting comes from.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import processes

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy" / "kafka"
STATE_FILE = "broker.json"


def cache_dir() -> Path:
    """Where resolved jars live: outside the clone, shared by every checkout on this machine."""
    root = os.environ.get("CLICKSTREAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clickstream-gru"
    )
    return Path(root)


def resolve_jars(pom: Path = DEPLOY_DIR / "pom.xml") -> Path:
    """Copy the broker runtime's jars into the cache (idempotent; a marker records completion)."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (`mvn`) is required to resolve the Kafka broker jars")
    tmp = libs.with_name(f"libs.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("resolving Apache Kafka %s from Maven Central into %s", KAFKA_VERSION, libs)
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"mvn failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    if not any(tmp.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"mvn finished but {tmp} holds no kafka_2.13 jar")
    (tmp / ".complete").write_text(KAFKA_VERSION)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)  # atomic: a concurrent reader sees no half-filled folder
    return libs


class BrokerError(RuntimeError):
    pass


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    controller_port: int
    data_dir: str
    sasl_port: int | None = None  # a SASL_PLAINTEXT (PLAIN) listener, when started with sasl_users
    ssl_port: int | None = None  # a TLS listener, when started with ssl_pem

    @property
    def sasl_bootstrap(self) -> str | None:
        return f"127.0.0.1:{self.sasl_port}" if self.sasl_port else None

    @property
    def ssl_bootstrap(self) -> str | None:
        return f"127.0.0.1:{self.ssl_port}" if self.ssl_port else None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _jaas_quote(v: str) -> str:
    if any(c in v for c in '"\\;\n'):
        raise BrokerError("SASL passwords may not contain quotes, backslashes, ';' or newlines")
    return f'"{v}"'


def sasl_properties(users: dict[str, str]) -> dict[str, str]:
    """An extra SASL_PLAINTEXT listener with the PLAIN mechanism; `users`: name -> password. The
    broker itself keeps talking PLAINTEXT between its own listeners (inter-broker, controller)."""
    if not users:
        raise BrokerError("a SASL listener needs at least one user")
    if not all(name.isidentifier() for name in users):
        raise BrokerError(f"SASL user names must be letters, digits and '_': {list(users)}")
    accounts = " ".join(f"user_{name}={_jaas_quote(pw)}" for name, pw in users.items())
    jaas = f"org.apache.kafka.common.security.plain.PlainLoginModule required {accounts};"
    return {
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
    }


def server_properties(port: int, controller_port: int, log_dir: Path, sasl_port: int | None = None,
                      sasl_users: dict[str, str] | None = None, ssl_port: int | None = None,
                      ssl_pem: Path | None = None) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "default.replication.factor": "1",
        "num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "auto.create.topics.enable": "true",
        "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),
        "delete.topic.enable": "true",
    }
    if sasl_port is not None:
        extra = f",SASL_PLAINTEXT://127.0.0.1:{sasl_port}"
        props["listeners"] += extra
        props["advertised.listeners"] += extra
        props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        props |= sasl_properties(sasl_users or {})
    if ssl_port is not None:
        extra = f",SSL://127.0.0.1:{ssl_port}"
        props["listeners"] += extra
        props["advertised.listeners"] += extra
        props["listener.security.protocol.map"] += ",SSL:SSL"
        # one PEM file: the private key (unencrypted PKCS#8) followed by the certificate chain
        props["listener.name.ssl.ssl.keystore.type"] = "PEM"
        props["listener.name.ssl.ssl.keystore.location"] = str(ssl_pem)
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _read_state(data_dir: Path) -> BrokerInfo | None:
    f = data_dir / STATE_FILE
    if not f.exists():
        return None
    return BrokerInfo(**json.loads(f.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def broker_responds(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """A real client call: list the cluster's topics."""
    from kafka import KafkaAdminClient  # heavy import kept local

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 client_id="clickstream-gru-probe")
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    try:
        admin.list_topics()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        admin.close()


def up(data_dir: Path, port: int | None = None, timeout_s: float = 90.0,
       heap: str = "768m", sasl_users: dict[str, str] | None = None,
       die_with_parent: bool = False, ssl_pem: Path | None = None) -> BrokerInfo:
    """Start a broker with a fresh data dir and return once a client call succeeds.
    `sasl_users` (name -> password): also open a SASL_PLAINTEXT listener (PLAIN) on a free port
    (`BrokerInfo.sasl_bootstrap`), next to the PLAINTEXT one; `ssl_pem` (key + certificate chain in
    one PEM file): a TLS listener (`BrokerInfo.ssl_bootstrap`). `die_with_parent`: the JVM gets
    SIGTERM when the calling process dies, however it dies (the demo; processes.py)."""
    data_dir = data_dir.resolve()
    existing = _read_state(data_dir)
    if existing and _alive(existing.pid):
        if broker_responds(existing.bootstrap):
            return existing
        raise BrokerError(f"a broker (pid {existing.pid}) is recorded in {data_dir} but does not answer")
    if shutil.which("java") is None:
        raise BrokerError("Java 17+ (`java`) is required to run the Kafka broker")
    libs = resolve_jars()
    port = port or (9092 if _port_is_free(9092) else free_port())
    if not _port_is_free(port):
        raise BrokerError(f"port {port} is already in use")
    controller_port = free_port()
    sasl_port = free_port() if sasl_users else None
    ssl_port = free_port() if ssl_pem else None
    log_dir = data_dir / "kraft-logs"
    shutil.rmtree(log_dir, ignore_errors=True)  # always a fresh cluster
    data_dir.mkdir(parents=True, exist_ok=True)
    props = data_dir / "server.properties"
    props.write_text(server_properties(port, controller_port, log_dir, sasl_port, sasl_users,
                                       ssl_port, ssl_pem))
    cp = f"{libs}/*"
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    fmt = subprocess.run(
        ["java", "-cp", cp, "kafka.tools.StorageTool", "format", "--config", str(props),
         f"--cluster-id={cluster_id}",  # "=": a URL-safe base64 id may start with "-"
         "--standalone", "--ignore-formatted"],
        capture_output=True, text=True,
    )
    if fmt.returncode != 0:
        raise BrokerError(f"formatting failed:\n{fmt.stdout}{fmt.stderr}")
    server_log = data_dir / "server.log"
    server_log.unlink(missing_ok=True)
    stdout = open(data_dir / "stdout.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
         f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}",
         f"-Dkafka.logs.file={server_log}", "-cp", cp, "kafka.Kafka", str(props)],
        stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the CLI that started it; Ctrl-C in a shell won't reach it
        preexec_fn=processes.die_with_parent() if die_with_parent else None,
    )
    info = BrokerInfo(pid=proc.pid, port=port, controller_port=controller_port, data_dir=str(data_dir),
                      sasl_port=sasl_port, ssl_port=ssl_port)
    (data_dir / STATE_FILE).write_text(json.dumps(info.__dict__))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"broker exited with {proc.returncode}; "
                              f"see {data_dir}/stdout.log and server.log")
        if server_log.exists() and "Kafka Server started" in server_log.read_text(errors="replace"):
            if broker_responds(info.bootstrap):
                return info
        time.sleep(0.3)
    down(data_dir)
    raise BrokerError(f"broker did not become ready within {timeout_s:.0f}s; see {server_log}")


def down(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM (controlled shutdown), wait, SIGKILL only after the timeout. False if none was running."""
    data_dir = data_dir.resolve()
    info = _read_state(data_dir)
    if info is None or not _alive(info.pid):
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(info.pid):
        _reap(info.pid)
        time.sleep(0.2)
    if _alive(info.pid):
        log.warning("broker pid %d ignored SIGTERM for %.0fs; killing", info.pid, timeout_s)
        os.kill(info.pid, signal.SIGKILL)
        _reap(info.pid)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return True


def running(info: BrokerInfo) -> bool:
    """Whether the broker's process is still there (cheap: no client call)."""
    return _alive(info.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def status(data_dir: Path) -> tuple[BrokerInfo | None, bool]:
    """(recorded broker, whether it answers a client call)."""
    info = _read_state(data_dir.resolve())
    if info is None or not _alive(info.pid):
        return info, False
    return info, broker_responds(info.bootstrap)


# --- faults: a crash and a restart on the same data dir (fault-scenario tests, benchmarks) -------
def kill(data_dir: Path, timeout_s: float = 30.0) -> BrokerInfo | None:
    """SIGKILL the recorded broker: a crash, no controlled shutdown. The data dir (cluster, topics,
    committed offsets) stays, so `restart` brings the same cluster back. Returns what was recorded."""
    data_dir = data_dir.resolve()
    info = _read_state(data_dir)
    if info is None or not _alive(info.pid):
        return info
    os.kill(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _alive(info.pid) and time.monotonic() < deadline:
        _reap(info.pid)
        time.sleep(0.05)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return info


def _listen_possible(port: int) -> bool:
    """Whether a server socket can bind the port as the JVM does (SO_REUSEADDR: connections a
    killed broker left in TIME_WAIT do not block it, a live listener does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def restart(data_dir: Path, timeout_s: float = 90.0, heap: str = "768m") -> BrokerInfo:
    """Start a stopped (`down`) or crashed (`kill`) broker again on its existing data dir, with the
    same ports and cluster id: unlike `up`, nothing is formatted or deleted. Returns once a client
    call succeeds."""
    data_dir = data_dir.resolve()
    existing = _read_state(data_dir)
    if existing and _alive(existing.pid):
        raise BrokerError(f"a broker (pid {existing.pid}) is still running in {data_dir}")
    props = data_dir / "server.properties"
    if not props.exists():
        raise BrokerError(f"no broker was ever started in {data_dir} (no server.properties)")
    listeners = next(line.split("=", 1)[1] for line in props.read_text().splitlines()
                     if line.startswith("listeners="))
    ports = {name: int(addr.rsplit(":", 1)[1])
             for name, addr in (entry.split("://", 1) for entry in listeners.split(","))}
    port, controller_port = ports["PLAINTEXT"], ports["CONTROLLER"]
    deadline = time.monotonic() + timeout_s
    while not (_listen_possible(port) and _listen_possible(controller_port)):  # a dying JVM's
        if time.monotonic() > deadline:
            raise BrokerError(f"ports {port}/{controller_port} are still in use")
        time.sleep(0.2)
    server_log = data_dir / "server.log"
    seen = server_log.stat().st_size if server_log.exists() else 0  # readiness: only new lines
    stdout = open(data_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
         f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}",
         f"-Dkafka.logs.file={server_log}", "-cp", f"{resolve_jars()}/*", "kafka.Kafka", str(props)],
        stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    info = BrokerInfo(pid=proc.pid, port=port, controller_port=controller_port, data_dir=str(data_dir))
    (data_dir / STATE_FILE).write_text(json.dumps(info.__dict__))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"restarted broker exited with {proc.returncode}; see {data_dir}/stdout.log")
        if server_log.exists():
            with open(server_log, "rb") as fh:
                fh.seek(seen if server_log.stat().st_size >= seen else 0)  # rolled over
                if b"Kafka Server started" in fh.read() and broker_responds(info.bootstrap):
                    return info
        time.sleep(0.3)
    down(data_dir)
    raise BrokerError(f"restarted broker did not become ready within {timeout_s:.0f}s; see {server_log}")
