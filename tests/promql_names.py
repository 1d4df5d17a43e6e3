#!/usr/bin/python3
"""Prints, one per line and sorted, the metric names that the PromQL
expressions of a Grafana dashboard (JSON) or a Prometheus rules file (YAML)
query: every identifier of an expression that is not a function (followed
by '('), a keyword, a label name (inside {...} or by/without/on/ignoring/
group_left/group_right (...)), a string, a number or a duration."""
import json
import re
import sys

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "atan2"}
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^{}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\[\]]*\]", "[]", e)  # ranges and subqueries
    e = re.sub(GROUPING, " ", e)
    names = set()
    # Not preceded by a word character, '.' or '$': no exponent of a
    # number, unit of a duration or dashboard variable.
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


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
    names.update(metric_names(expr))
for name in sorted(names):
    print(name)
