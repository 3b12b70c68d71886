"""deploy/: the Dockerfile, docker-compose.yml and Kubernetes manifests agree with the code.

Neither compose nor Kubernetes can run here, so these tests read the files: every command is a
real `stream-app` subcommand (parsed by cli.build_parser), every CLICKSTREAM_*/KAFKA_* variable
our containers get is one Settings.from_env reads, the settings they build parse, and ports,
probes, volumes and scrape targets match the settings.
"""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_app import config
from stream_app.cli import build_parser
from stream_app.config import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
IMAGE = "clickstream-gru"
# the variables Settings.from_env reads, from its source: the one reader of the environment
ENV_NAMES = set(re.findall(r"[\"']((?:CLICKSTREAM|KAFKA)_[A-Z0-9_]+)[\"']",
                           inspect.getsource(config.Settings.from_env)))


def load(path: str) -> Any:
    return yaml.safe_load((DEPLOY / path).read_text())


def k8s() -> list[dict]:
    return [d for p in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def stream_app_argvs(entrypoint: list[str] | None, command: list[str] | str | None) -> list[list[str]]:
    """The `stream-app` invocations a container runs: its args under the image's entrypoint
    (`stream-app`), or each `stream-app ...` in a shell script."""
    if isinstance(command, str):
        command = shlex.split(command)
    if not entrypoint or entrypoint == ["stream-app"]:
        return [list(command or ["worker"])]  # the Dockerfile's CMD
    assert entrypoint[0] in ("sh", "bash") and entrypoint[-1].startswith("-") and "c" in entrypoint[-1]
    script = " ".join(command or [])
    return [shlex.split(part)[1:] for part in re.split(r";|&&|\|\||[{}]", script)
            if part.strip().startswith("stream-app")]


def parse(argv: list[str]) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`stream-app {' '.join(argv)}` is not a valid stream-app command")


def settings_for(env: dict[str, Any]) -> Settings:
    env = {k: str(v) for k, v in env.items()}
    unknown = {k for k in env if k.startswith(("CLICKSTREAM_", "KAFKA_"))} - ENV_NAMES
    assert not unknown, f"not read by Settings.from_env: {unknown}"
    return Settings.from_env(env)


def test_env_names_come_from_the_settings_source():
    assert {"KAFKA_BOOTSTRAP_SERVERS", "CLICKSTREAM_WEB_PORT", "CLICKSTREAM_STALL_S",
            "CLICKSTREAM_RETRAIN_WEB_PORT", "CLICKSTREAM_DATA_DIR"} <= ENV_NAMES


def test_dockerfile_runs_stream_app_and_exposes_the_default_ports():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["stream-app"]' in text
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and parse(yaml.safe_load(cmd.group(1))).command == "worker"
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", text, re.M) for p in line.split()}
    d = Settings()
    assert exposed == {d.web_port, d.retrain_web_port}
    env = dict(re.findall(r"\b((?:CLICKSTREAM|KAFKA)_[A-Z0-9_]+)=(\S+)", text))
    assert settings_for(env).web_host == "0.0.0.0"


# --- docker compose ------------------------------------------------------------------------------

def compose_services() -> dict[str, dict]:
    return load("docker-compose.yml")["services"]


def ours() -> dict[str, dict]:
    return {n: s for n, s in compose_services().items() if s.get("image", "").startswith(IMAGE)}


def test_compose_has_the_whole_service():
    services = compose_services()
    assert {"kafka", "worker-1", "worker-2", "retrain", "prometheus", "grafana"} <= services.keys()
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("//")[1]
    for name, svc in ours().items():
        assert settings_for(svc["environment"]).bootstrap == advertised, name
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


def test_compose_commands_are_stream_app_subcommands():
    run = {name: [parse(a).command for a in stream_app_argvs(s.get("entrypoint"), s.get("command"))]
           for name, s in ours().items()}
    assert run["worker-1"] == run["worker-2"] == ["worker"]
    assert run["retrain"] == ["retrain"]
    assert all(run.values()), run


def test_compose_ports_probes_and_scrape_targets_match_the_settings():
    prom = load("prometheus/prometheus.yml")
    targets = {j["job_name"]: {t for sc in j["static_configs"] for t in sc["targets"]}
               for j in prom["scrape_configs"]}
    workers = {n: s for n, s in ours().items() if s.get("command") == ["worker"]}
    assert len(workers) == 2
    for name, svc in workers.items():
        s = settings_for(svc["environment"])
        assert {int(p.split(":")[-1]) for p in svc["ports"]} == {s.web_port}
        probe = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{s.web_port}/ready" in probe
        assert s.web_host == "0.0.0.0"  # reachable by Prometheus and the probe's peers
        mounts = [v.split(":")[1] for v in svc["volumes"]]
        for path in (s.data_dir, s.model_dir):
            assert any(str(path).startswith(m) for m in mounts), f"{name}: {path} not on a volume"
    assert targets["clickstream-worker"] == {f"{n}:{settings_for(s['environment']).web_port}"
                                             for n, s in workers.items()}
    retrain = ours()["retrain"]
    s = settings_for(retrain["environment"])
    assert {int(p.split(":")[-1]) for p in retrain["ports"]} == {s.retrain_web_port}
    assert f"127.0.0.1:{s.retrain_web_port}/health" in " ".join(retrain["healthcheck"]["test"])
    assert targets["clickstream-retrain"] == {f"retrain:{s.retrain_web_port}"}
    assert any(str(s.model_dir).startswith(v.split(":")[1]) for v in retrain["volumes"])


def test_compose_mounts_our_prometheus_and_grafana_files():
    services = compose_services()

    def mounts(name: str) -> dict[str, str]:
        out = {}
        for v in services[name]["volumes"]:
            src, dst = v.split(":")[:2]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), src
                out[dst] = src
        return out

    prom = mounts("prometheus")
    assert prom["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    rules = load("prometheus/prometheus.yml")["rule_files"]
    assert {f"/etc/prometheus/{r}" for r in rules} <= prom.keys()  # relative to the config file
    graf = mounts("grafana")
    assert graf["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = load("grafana/provisioning/dashboards/clickstream.yml")["providers"][0]
    assert graf[provider["options"]["path"]] == "./grafana/dashboards"
    datasource = load("grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


# --- Kubernetes ----------------------------------------------------------------------------------

def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s() if d["kind"] == kind}


def container_env(spec: dict, container: dict) -> dict[str, str]:
    """What the container sees: envFrom ConfigMaps and Secrets, then its own env entries."""
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env |= by_kind("ConfigMap")[ref["configMapRef"]["name"]]["data"]
        else:
            env |= by_kind("Secret")[ref["secretRef"]["name"]]["stringData"]
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "pod-0")  # valueFrom (the pod name): any stable string
    return env


def pod_checks(pod: dict, container: dict, subcommand: str) -> Settings:
    env = container_env(pod, container)
    s = settings_for(env)
    assert [parse(a).command for a in stream_app_argvs(container.get("command"),
                                                       container.get("args"))] == [subcommand]
    for init in pod.get("initContainers", []):
        for argv in stream_app_argvs(init.get("command"), init.get("args")):
            parse(argv)
        settings_for(container_env(pod, init))
    res = container["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and {"cpu", "memory"} <= res["limits"].keys()
    return s


def test_workers_are_a_statefulset_with_state_volume_probes_and_headless_service():
    sts = by_kind("StatefulSet")["clickstream-worker"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    s = pod_checks(pod, c, "worker")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": s.web_port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(s.web_port)
    # RocksDB state on the pod's own persistent volume
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    state_mount = [p for p in mounts if str(s.data_dir).startswith(p)]
    assert state_mount and mounts[state_mount[0]] in claims
    assert any(str(s.model_dir).startswith(p) for p in mounts)
    # static membership id from the pod's stable name
    assert {"name": "CLICKSTREAM_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} \
        in c["env"]
    svc = by_kind("Service")[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert {p["port"] for p in svc["spec"]["ports"]} == {s.web_port}


def test_retrain_worker_is_a_deployment_with_its_registry_volume():
    dep = by_kind("Deployment")["clickstream-retrain"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    s = pod_checks(pod, c, "retrain")
    assert {p["containerPort"] for p in c["ports"]} == {s.retrain_web_port}
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == \
        str(s.retrain_web_port)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in c["volumeMounts"] if str(s.model_dir).startswith(m["mountPath"]))
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind("PersistentVolumeClaim")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
