#!/usr/bin/env python3
"""deploy/docker and deploy/kubernetes, loaded as YAML (python3-yaml): the
volume, mount and resources wiring a reader would check. kubectl is not
available here, so this is not a schema validation by the API server.

usage: deploy_manifests.py SOURCE_DIR
"""
import os
import re
import shutil
import subprocess
import sys

import yaml

SEGMENT_BYTES = 3_198_976  # PlanRegions(shm::Capacities{}).total_size_bytes


def quantity_bytes(text):
    """Kubernetes (Mi, Gi, M, G) and docker (m, g) sizes in bytes."""
    match = re.fullmatch(r"(\d+)\s*(Ki|Mi|Gi|k|K|M|G|m|g)?", str(text))
    assert match, "bad size %r" % text
    scale = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "K": 10**3, "M": 10**6,
             "G": 10**9, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    return int(match.group(1)) * scale


def flag(args, name):
    assert name in args, "%s not in %s" % (name, args)
    return args[args.index(name) + 1]


def check_resources(container):
    resources = container.get("resources", {})
    assert resources.get("requests", {}).get("cpu"), container["name"] + ": no cpu request"
    assert resources.get("requests", {}).get("memory"), container["name"] + ": no memory request"
    assert resources.get("limits", {}).get("memory"), container["name"] + ": no memory limit"


def check_sidecar(path):
    with open(path) as f:
        deployment = yaml.safe_load(f)
    assert deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]
    processes = int(pod["metadata"]["annotations"]["shmetrics.io/processes"])
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    empty_dir = volumes["shmetrics"]["emptyDir"]
    assert empty_dir["medium"] == "Memory", "the segments must be in memory (tmpfs)"
    size = quantity_bytes(empty_dir["sizeLimit"])
    assert size >= processes * SEGMENT_BYTES, "sizeLimit %d < %d processes x %d" % (size, processes, SEGMENT_BYTES)
    containers = {c["name"]: c for c in spec["containers"]}
    exporter = containers.pop("shmetrics-exporter")
    assert len(containers) == 1, "one service container beside the exporter"
    app = next(iter(containers.values()))
    mount = {m["name"]: m for m in exporter["volumeMounts"]}["shmetrics"]
    app_mount = {m["name"]: m for m in app["volumeMounts"]}["shmetrics"]
    assert not mount.get("readOnly") and not app_mount.get("readOnly")
    assert flag(exporter["args"], "--dir") == mount["mountPath"]
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["SHMETRICS_DIR"] == app_mount["mountPath"], "the service writes where the exporter reads"
    assert flag(exporter["args"], "--web.listen-address").endswith(":9464")
    assert exporter["ports"][0]["containerPort"] == 9464
    assert spec["securityContext"]["runAsUser"], "one uid for both containers"
    check_resources(exporter)
    check_resources(app)
    # tmpfs pages are charged to the pod: the service's limit must leave room.
    assert quantity_bytes(app["resources"]["limits"]["memory"]) > size


def check_daemonset(path):
    with open(path) as f:
        daemonset = yaml.safe_load(f)
    assert daemonset["kind"] == "DaemonSet"
    spec = daemonset["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in spec["volumes"]}["shmetrics"]
    assert volume["hostPath"]["path"] == "/dev/shm/shmetrics"
    assert volume["hostPath"]["type"] == "Directory"
    (exporter,) = spec["containers"]
    mount = {m["name"]: m for m in exporter["volumeMounts"]}["shmetrics"]
    assert flag(exporter["args"], "--dir") == mount["mountPath"]
    if mount.get("readOnly"):
        assert "--no-retire" in exporter["args"], "a read-only mount needs --no-retire"
    assert "--trusted-uids" in exporter["args"] or "--allow-other-owners" in exporter["args"], \
        "services on the host run as other uids"
    assert exporter["ports"][0]["containerPort"] == 9464
    check_resources(exporter)


def check_compose(path):
    with open(path) as f:
        compose = yaml.safe_load(f)
    processes = int(compose["x-shmetrics-processes"])
    volume = compose["volumes"]["shmetrics-segments"]
    options = volume["driver_opts"]
    assert options["type"] == "tmpfs"
    size = dict(o.split("=", 1) for o in options["o"].split(","))["size"]
    assert quantity_bytes(size) >= processes * SEGMENT_BYTES, "tmpfs %s < %d processes" % (size, processes)
    services = compose["services"]
    exporter = services["exporter"]
    mounts = {}
    for name, service in services.items():
        (mount,) = [m for m in service["volumes"] if m["source"] == "shmetrics-segments"]
        assert mount["type"] == "volume"
        mounts[name] = mount["target"]
    assert flag(exporter["command"], "--dir") == mounts["exporter"]
    assert services["demo"]["environment"]["SHMETRICS_DIR"] == mounts["demo"]
    assert flag(services["demo"]["command"], "--dir") == mounts["demo"]
    assert services["demo"]["user"] == exporter["user"], "the exporter reads its own uid's segments"
    assert any(p.startswith("127.0.0.1:") for p in exporter["ports"]), "published on loopback only"
    assert exporter["deploy"]["resources"]["limits"]["memory"]


def main():
    deploy = os.path.join(sys.argv[1], "deploy")
    check_sidecar(os.path.join(deploy, "kubernetes", "sidecar.yaml"))
    check_daemonset(os.path.join(deploy, "kubernetes", "daemonset.yaml"))
    check_compose(os.path.join(deploy, "docker", "compose.yml"))
    prometheus_dir = os.path.join(deploy, "prometheus")
    for name in ("agent.yml", "central.yml"):
        with open(os.path.join(prometheus_dir, name)) as f:
            assert isinstance(yaml.safe_load(f), dict)
    if shutil.which("promtool"):
        for argv in (["promtool", "check", "config", "--agent", "agent.yml"],
                     ["promtool", "check", "config", "central.yml"]):
            result = subprocess.run(argv, cwd=prometheus_dir, capture_output=True, text=True)
            assert result.returncode == 0, "%s:\n%s%s" % (" ".join(argv), result.stdout, result.stderr)
    else:
        print("deploy manifests: promtool not available: agent.yml and central.yml only parsed as YAML")
    print("deploy manifests: sidecar, daemonset, compose ok (YAML wiring only: kubectl is not available)")


if __name__ == "__main__":
    main()
