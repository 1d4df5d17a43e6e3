#!/usr/bin/env python3
"""The fleet test: writers -> shmetrics-exporter -> Prometheus in agent mode
(--enable-feature=agent) -> remote_write -> a central Prometheus
(--web.enable-remote-write-receiver). Every server is on a loopback port,
with its storage in a temporary directory; the configs are deploy/prometheus/
agent.yml and central.yml with only the addresses replaced. Passes when
PromQL on the central Prometheus returns exactly the writers' counter sum.

usage: fleet_test.py SOURCE_DIR EXPORTER_BIN FLEET_WRITER_BIN VERSION
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

DEADLINE_SECONDS = 60
VALUES = (1000, 234)  # one per writer process; the receiver must say 1234


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port, promql):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": promql}))
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    source_dir, exporter_bin, writer_bin, version = sys.argv[1:5]
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("fleet test: Debian's prometheus is not installed (.ci/deps.sh installs it)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="shmetrics-fleet.")
    processes = []
    logs = {}

    def start(name, argv, **kwargs):
        log = open(os.path.join(tmp, name + ".log"), "w")
        logs[name] = log.name
        process = subprocess.Popen(argv, stdout=kwargs.pop("stdout", log), stderr=log, **kwargs)
        processes.append(process)
        return process

    try:
        segments = os.path.join(tmp, "segments")
        os.mkdir(segments)
        for i, value in enumerate(VALUES):
            writer = start("writer%d" % i, [writer_bin, segments, str(value)], stdout=subprocess.PIPE, text=True)
            if writer.stdout.readline().strip() != "ready":
                raise RuntimeError("writer %d did not start" % i)

        exporter_port, agent_port, central_port = free_port(), free_port(), free_port()
        start("exporter", [exporter_bin, "--dir", segments, "--web.listen-address", "127.0.0.1:%d" % exporter_port])

        deploy = os.path.join(source_dir, "deploy", "prometheus")
        with open(os.path.join(deploy, "agent.yml")) as f:
            agent = yaml.safe_load(f)
        agent["global"]["scrape_interval"] = "1s"
        agent["scrape_configs"][0]["static_configs"][0]["targets"] = ["127.0.0.1:%d" % exporter_port]
        agent["remote_write"][0]["url"] = "http://127.0.0.1:%d/api/v1/write" % central_port
        agent["remote_write"][0]["queue_config"]["batch_send_deadline"] = "1s"
        with open(os.path.join(tmp, "agent.yml"), "w") as f:
            yaml.safe_dump(agent, f)
        shutil.copy(os.path.join(deploy, "central.yml"), tmp)
        shutil.copy(os.path.join(deploy, "rules.yml"), tmp)

        start("central", [prometheus, "--web.enable-remote-write-receiver",
                          "--config.file=" + os.path.join(tmp, "central.yml"),
                          "--storage.tsdb.path=" + os.path.join(tmp, "central-data"),
                          "--web.listen-address=127.0.0.1:%d" % central_port])
        start("agent", [prometheus, "--enable-feature=agent",
                        "--config.file=" + os.path.join(tmp, "agent.yml"),
                        "--storage.agent.path=" + os.path.join(tmp, "agent-data"),
                        "--web.listen-address=127.0.0.1:%d" % agent_port])

        expected = str(sum(VALUES))
        deadline = time.monotonic() + DEADLINE_SECONDS
        last = None
        while time.monotonic() < deadline:
            for process in processes[len(VALUES):]:
                if process.poll() is not None:
                    raise RuntimeError("a server exited early (code %d)" % process.returncode)
            try:
                last = query(central_port, 'sum(fleet_jobs_total{service="fleet",job="shmetrics"})')
                result = last.get("data", {}).get("result", [])
                if result and result[0]["value"][1] == expected:
                    series = query(central_port, 'fleet_jobs_total{host="host-1"}')["data"]["result"]
                    if len(series) != 1:
                        raise RuntimeError("expected one fleet_jobs_total series with the agent's host label: %s" % series)
                    build = query(central_port, 'shmetrics_exporter_build_info{version="%s"}' % version)
                    build = build["data"]["result"]
                    if len(build) != 1 or build[0]["value"][1] != "1":
                        raise RuntimeError("shmetrics_exporter_build_info{version=%r}: %s" % (version, build))
                    print("fleet test: the central Prometheus returns sum(fleet_jobs_total) = %s "
                          "(scraped by the agent, remote-written)" % expected)
                    return 0
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError("no %s from the central Prometheus within %d s; last answer: %s"
                           % (expected, DEADLINE_SECONDS, last))
    except Exception as error:
        print("fleet test: %s" % error, file=sys.stderr)
        for name, path in logs.items():
            with open(path) as f:
                print("--- %s log (tail)\n%s" % (name, "".join(f.readlines()[-15:])), file=sys.stderr)
        return 1
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
