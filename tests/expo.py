#!/usr/bin/python3
"""Test helper: an independent HTTP client and exposition checker.

  expo.py get URL [--accept A] [--gzip] [--method M] [--auth USER:PW] [--max-time SECONDS]
      prints "STATUS n", "CONTENT-TYPE t", "ENCODING e", a blank line, then the body.
  expo.py samples FILE (text|openmetrics)
      parses FILE with python3-prometheus-client, checks histogram invariants,
      prints one normalized sample per line, sorted: name{k="v",...} value
"""
import base64
import gzip
import math
import sys
import urllib.error
import urllib.request


def get(argv):
    url, accept, want_gzip, method, auth, timeout = argv[0], None, False, "GET", None, 20.0
    i = 1
    while i < len(argv):
        if argv[i] == "--accept":
            accept = argv[i + 1]; i += 2
        elif argv[i] == "--gzip":
            want_gzip = True; i += 1
        elif argv[i] == "--method":
            method = argv[i + 1]; i += 2
        elif argv[i] == "--auth":
            auth = argv[i + 1]; i += 2
        elif argv[i] == "--max-time":
            timeout = float(argv[i + 1]); i += 2
        else:
            raise SystemExit("bad argument " + argv[i])
    request = urllib.request.Request(url, method=method)
    if accept:
        request.add_header("Accept", accept)
    if want_gzip:
        request.add_header("Accept-Encoding", "gzip")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
        status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, e.headers, e.read()
    encoding = headers.get("Content-Encoding", "identity")
    if encoding == "gzip":
        body = gzip.decompress(body)
    sys.stdout.write("STATUS %d\nCONTENT-TYPE %s\nENCODING %s\n\n" % (status, headers.get("Content-Type"), encoding))
    sys.stdout.write(body.decode("utf-8"))


def escape(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def burst(url, clients):
    """GETs url from `clients` threads at once; prints how many got 200 and a parsable body."""
    import threading
    from prometheus_client.parser import text_string_to_metric_families
    ok = []
    def one():
        body = urllib.request.urlopen(url, timeout=60).read().decode("utf-8")
        list(text_string_to_metric_families(body))
        ok.append(1)
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(len(ok))


def fmt(value):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def samples(path, kind):
    text = open(path, encoding="utf-8").read()
    if kind == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    lines = []
    for family in text_string_to_metric_families(text):
        buckets = {}
        counts = {}
        for s in family.samples:
            labels = dict(s.labels)
            if s.name.endswith("_bucket"):
                le = labels.pop("le")
                key = tuple(sorted(labels.items()))
                buckets.setdefault(key, []).append((float(le), s.value))
            elif s.name.endswith("_count") and family.type == "histogram":
                counts[tuple(sorted(labels.items()))] = s.value
            label_text = ",".join('%s="%s"' % (k, escape(v)) for k, v in sorted(s.labels.items()))
            lines.append("%s{%s} %s" % (s.name, label_text, fmt(s.value)))
        for key, series in buckets.items():
            series.sort()
            if series[-1][0] != math.inf:
                raise SystemExit("histogram %s %s has no +Inf bucket" % (family.name, key))
            for (_, a), (_, b) in zip(series, series[1:]):
                if b < a:
                    raise SystemExit("histogram %s %s buckets are not cumulative" % (family.name, key))
            if counts.get(key) != series[-1][1]:
                raise SystemExit("histogram %s %s: +Inf %s != _count %s" % (family.name, key, series[-1][1], counts.get(key)))
    for line in sorted(lines):
        print(line)


if __name__ == "__main__":
    if sys.argv[1] == "get":
        get(sys.argv[2:])
    elif sys.argv[1] == "burst":
        burst(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "samples":
        samples(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: expo.py get|samples ...")
