#!/usr/bin/python3
"""Test helper: an independent HTTP client and exposition checker.

  expo.py get URL [--accept A] [--gzip] [--method M] [--auth USER:PW] [--max-time SECONDS]
      prints "STATUS n", "CONTENT-TYPE t", "ENCODING e", a blank line, then the body.
  expo.py samples FILE (text|openmetrics) [--exemplars] [--created]
      parses FILE with python3-prometheus-client, checks histogram invariants,
      prints one normalized sample per line, sorted: name{k="v",...} value
      --exemplars  also a line per exemplar (OpenMetrics), on the sample it hangs on:
                     name{k="v",...} exemplar {k="v",...} VALUE TS
                   TS: seconds with 3 decimals, or - without a timestamp
      --created    print the value of a counter's, histogram's or summary's
                   _created sample as seconds with 3 decimals (as
                   proto_samples.py --created does), not as other values are
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


def labels_text(labels):
    return ",".join('%s="%s"' % (k, escape(v)) for k, v in sorted(labels.items()))


def timestamp_text(timestamp):
    """An exemplar's timestamp (a samples.Timestamp, a float or None) as seconds, 3 decimals."""
    return "-" if timestamp is None else "%.3f" % float(timestamp)


def samples(path, kind, flags=()):
    for flag in flags:
        if flag not in ("--exemplars", "--created"):
            raise SystemExit("bad argument " + flag)
    text = open(path, encoding="utf-8").read()
    if kind == "openmetrics":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    lines = []
    for family in text_string_to_metric_families(text):
        buckets = {}
        counts = {}
        histogram = family.type in ("histogram", "gaugehistogram")
        for s in family.samples:
            labels = dict(s.labels)
            # Only a histogram's own _bucket/_count/_gcount samples take part in
            # the checks (a gauge may be called x_bucket; _created, _sum and
            # _gsum are printed, not checked).
            if histogram and s.name == family.name + "_bucket":
                le = labels.pop("le")
                key = tuple(sorted(labels.items()))
                buckets.setdefault(key, []).append((float(le), s.value))
            elif histogram and s.name in (family.name + "_count", family.name + "_gcount"):
                counts[tuple(sorted(labels.items()))] = s.value
            label_text = labels_text(s.labels)
            value_text = fmt(s.value)
            if ("--created" in flags and s.name == family.name + "_created"
                    and family.type in ("counter", "histogram", "summary")):
                value_text = "%.3f" % s.value
            lines.append("%s{%s} %s" % (s.name, label_text, value_text))
            if "--exemplars" in flags and getattr(s, "exemplar", None) is not None:
                e = s.exemplar
                lines.append("%s{%s} exemplar {%s} %s %s" % (
                    s.name, label_text, labels_text(e.labels), fmt(e.value), timestamp_text(e.timestamp)))
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
        samples(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit("usage: expo.py get|samples ...")
