#!/usr/bin/python3
"""Prints, one per line and sorted, the metric names that the PromQL
expressions of a Grafana dashboard (JSON) or a Prometheus rules file (YAML)
query: identifiers written directly before '{' or '['."""
import json
import re
import sys

exprs = []
path = sys.argv[1]
if path.endswith(".json"):
    dashboard = json.load(open(path))
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel["targets"]]
else:
    import yaml
    for group in yaml.safe_load(open(path))["groups"]:
        exprs += [rule["expr"] for rule in group["rules"]]
names = set()
for expr in exprs:
    names.update(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[\{\[]", expr))
for name in sorted(names):
    print(name)
