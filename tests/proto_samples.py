#!/usr/bin/python3
"""Test helper: an independent decoder of the Prometheus protobuf exposition.

  proto_samples.py FILE [--native] [--exemplars] [--created]
      FILE holds a body of Content-Type
        application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited
      (varint length, MetricFamily message, repeated). Decodes it with
      python3-protobuf against docs/metrics.proto (compiled here with protoc),
      checks histogram invariants and prints one normalized sample per line,
      sorted, in the format of `expo.py samples FILE text`:
        name{k="v",...} value
      --native     also a line per native histogram (schema set):
                     name{...} native schema=S zero_threshold=Z zero_count=N count=C sum=X positive=[i:c,...] negative=[i:c,...]
      --exemplars  also a line per exemplar:
                     name{...} exemplar {k="v",...} VALUE TS
      --created    also a line per created timestamp:
                     name_created{...} SECONDS
  proto_samples.py --self-test
      encodes a few families in Python and checks the decoder's lines.

Exits 1 with a message on stderr when the body does not decode or breaks an
invariant.
"""
import importlib
import math
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from expo import escape, fmt  # noqa: E402  (the same number and label rules as expo.py)

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs")


# le_text(bound): the text of a classic bucket's `le` label (also used for a
# summary's `quantile`). The text parser behind `expo.py samples FILE text`
# keeps `le` exactly as the exposition spells it, so this is the spelling the
# text exposition must use for the two outputs to compare equal:
#   +inf -> "+Inf" (-inf -> "-Inf", NaN -> "NaN"),
#   otherwise Python's shortest round-trip repr() with a trailing ".0" dropped:
#   0.005 -> "0.005", 1.0 -> "1", 2.5 -> "2.5", 1000000.0 -> "1000000",
#   0.0001 -> "0.0001", 1e-05 -> "1e-05", 1e+16 -> "1e+16", -0.0 -> "-0".
# repr() writes an exponent only below 1e-4 or from 1e16 up, and then as
# "1e-05" / "1.5e+17" (sign, at least two exponent digits).
def le_text(bound):
    if math.isnan(bound):
        return "NaN"
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    text = repr(float(bound))
    return text[:-2] if text.endswith(".0") else text


def seconds_text(timestamp):
    """A google.protobuf.Timestamp as seconds with exactly 3 decimals."""
    return "%.3f" % (float(timestamp.seconds) + float(timestamp.nanos) / 1e9)


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------
# The schema

_schema = None


def schema():
    """metrics_pb2, compiled from docs/metrics.proto into a temporary directory."""
    global _schema
    if _schema is not None:
        return _schema
    if not os.path.exists(os.path.join(DOCS, "metrics.proto")):
        raise Failure("no schema at %s" % os.path.join(DOCS, "metrics.proto"))
    protoc = shutil.which("protoc")
    if protoc is None:
        raise Failure("protoc not found (Debian package protobuf-compiler)")
    tmp = tempfile.mkdtemp(prefix="proto_samples.")
    try:
        includes = ["-I", DOCS]
        if os.path.exists("/usr/include/google/protobuf/timestamp.proto"):
            includes += ["-I", "/usr/include"]  # from libprotobuf-dev
        else:
            # protobuf-compiler alone ships no .proto files; protoc only needs
            # the message's shape, and at run time metrics_pb2 binds to
            # python3-protobuf's own google.protobuf.timestamp_pb2.
            stub = os.path.join(tmp, "include", "google", "protobuf")
            os.makedirs(stub)
            with open(os.path.join(stub, "timestamp.proto"), "w") as f:
                f.write('syntax = "proto3";\npackage google.protobuf;\n'
                        'message Timestamp { int64 seconds = 1; int32 nanos = 2; }\n')
            includes += ["-I", os.path.join(tmp, "include")]
        out = os.path.join(tmp, "out")
        os.makedirs(out)
        r = subprocess.run([protoc, "--python_out=" + out] + includes + ["metrics.proto"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        if r.returncode != 0:
            raise Failure("protoc failed on docs/metrics.proto:\n" + r.stdout)
        sys.path.insert(0, out)
        try:
            _schema = importlib.import_module("metrics_pb2")
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _schema


# ---------------------------------------------------------------------------
# Decoding

def read_varint(data, pos):
    """(value, next position), or None when data ends inside the varint."""
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise Failure("length prefix at byte %d is longer than 10 bytes" % pos)


def split_delimited(data):
    """The message bodies of a delimited stream."""
    messages, pos = [], 0
    while pos < len(data):
        start = pos
        got = read_varint(data, pos)
        if got is None:
            raise Failure("truncated length prefix at byte %d (of %d)" % (start, len(data)))
        length, pos = got
        if pos + length > len(data):
            raise Failure("truncated message #%d at byte %d: length %d, only %d bytes left"
                          % (len(messages) + 1, start, length, len(data) - pos))
        messages.append(data[pos:pos + length])
        pos += length
    return messages


def parse_family(body, number):
    pb = schema()
    family = pb.MetricFamily()
    try:
        family.ParseFromString(body)
    except Exception as e:  # google.protobuf.message.DecodeError, mostly
        raise Failure("message #%d does not parse as a MetricFamily: %s" % (number, e))
    # A field number or wire type the schema does not know lands in the
    # unknown fields; for a hand-written encoder that is a bug, not news.
    known = pb.MetricFamily()
    known.CopyFrom(family)
    known.DiscardUnknownFields()
    if known.ByteSize() != family.ByteSize():
        raise Failure("message #%d (family %r) has fields that are not in docs/metrics.proto (wrong number or wire type)"
                      % (number, family.name))
    return family


def series(name, labels, extra=()):
    pairs = sorted(list(labels.items()) + list(extra))
    return "%s{%s}" % (name, ",".join('%s="%s"' % (k, escape(v)) for k, v in pairs))


def label_dict(pairs, where):
    labels = {}
    for pair in pairs:
        if not pair.name:
            raise Failure("%s: a label without a name" % where)
        if pair.name in labels:
            raise Failure("%s: label %s given twice" % (where, pair.name))
        labels[pair.name] = pair.value
    return labels


def exemplar_line(sample, exemplar, where):
    labels = label_dict(exemplar.label, where + " exemplar")
    ts = seconds_text(exemplar.timestamp) if exemplar.HasField("timestamp") else "-"
    return "%s exemplar %s %s %s" % (sample, series("", labels), fmt(exemplar.value), ts)


def native_buckets(spans, deltas, counts, side, where):
    """[(absolute index, count)] of one side of a native histogram."""
    if len(deltas) and len(counts):
        raise Failure("%s: both %s_delta and %s_count are set" % (where, side, side))
    wanted = sum(span.length for span in spans)
    values = list(counts) if len(counts) else list(deltas)
    if len(values) != wanted:
        raise Failure("%s: %s spans cover %d buckets but there are %d %s"
                      % (where, side, wanted, len(values), "counts" if len(counts) else "deltas"))
    buckets, index, running, k = [], 0, 0, 0
    for n, span in enumerate(spans):
        if n > 0 and span.offset < 0:
            raise Failure("%s: %s span #%d has a negative offset %d" % (where, side, n + 1, span.offset))
        index = span.offset if n == 0 else index + span.offset
        for _ in range(span.length):
            if len(counts):
                count = values[k]
            else:
                running += values[k]
                count = running
            if math.isnan(count) or count < 0:
                raise Failure("%s: %s bucket %d has count %s" % (where, side, index, fmt(count)))
            buckets.append((index, count))
            index += 1
            k += 1
    return buckets


def histogram_lines(name, labels, h, flags, where):
    lines = []
    is_float = h.sample_count_float > 0
    count = h.sample_count_float if is_float else h.sample_count
    previous_bound, previous_count = -math.inf, 0
    for b in h.bucket:
        bound = b.upper_bound
        cumulative = b.cumulative_count_float if b.cumulative_count_float > 0 else b.cumulative_count
        if math.isnan(bound) or bound <= previous_bound:
            raise Failure("%s: bucket bounds are not increasing (%s after %s)" % (where, fmt(bound), fmt(previous_bound)))
        if cumulative < previous_count:
            raise Failure("%s: buckets are not cumulative (le=%s has %s after %s)"
                          % (where, le_text(bound), fmt(cumulative), fmt(previous_count)))
        sample = series(name + "_bucket", labels, [("le", le_text(bound))])
        lines.append("%s %s" % (sample, fmt(cumulative)))
        if "--exemplars" in flags and b.HasField("exemplar"):
            lines.append(exemplar_line(sample, b.exemplar, where))
        previous_bound, previous_count = bound, cumulative
    if previous_bound == math.inf:
        if previous_count != count:
            raise Failure("%s: +Inf bucket %s != count %s" % (where, fmt(previous_count), fmt(count)))
    else:
        if previous_count > count:
            raise Failure("%s: bucket le=%s holds %s, more than count %s"
                          % (where, le_text(previous_bound), fmt(previous_count), fmt(count)))
        lines.append("%s %s" % (series(name + "_bucket", labels, [("le", "+Inf")]), fmt(count)))
    lines.append("%s %s" % (series(name + "_sum", labels), fmt(h.sample_sum)))
    lines.append("%s %s" % (series(name + "_count", labels), fmt(count)))

    if h.HasField("schema"):
        # Decoded (and checked) with or without --native.
        zero_count = h.zero_count_float if h.zero_count_float > 0 else h.zero_count
        positive = native_buckets(h.positive_span, h.positive_delta, h.positive_count, "positive", where)
        negative = native_buckets(h.negative_span, h.negative_delta, h.negative_count, "negative", where)
        if math.isnan(zero_count) or zero_count < 0:
            raise Failure("%s: zero bucket has count %s" % (where, fmt(zero_count)))
        total = zero_count + sum(c for _, c in positive) + sum(c for _, c in negative)
        # count may exceed the buckets' total (NaN observations), never the reverse.
        if total > count * (1 + 1e-12):
            raise Failure("%s: native buckets hold %s observations, count is %s" % (where, fmt(total), fmt(count)))
        if "--native" in flags:
            lines.append("%s native schema=%d zero_threshold=%s zero_count=%s count=%s sum=%s positive=[%s] negative=[%s]" % (
                series(name, labels), h.schema, fmt(h.zero_threshold), fmt(zero_count), fmt(count), fmt(h.sample_sum),
                ",".join("%d:%s" % (i, fmt(c)) for i, c in positive),
                ",".join("%d:%s" % (i, fmt(c)) for i, c in negative)))
    if "--exemplars" in flags:
        for exemplar in h.exemplars:
            lines.append(exemplar_line(series(name + "_native_exemplar", labels), exemplar, where))
    if "--created" in flags and h.HasField("created_timestamp"):
        lines.append("%s %s" % (series(name + "_created", labels), seconds_text(h.created_timestamp)))
    return lines


VALUE_FIELDS = ("counter", "gauge", "summary", "untyped", "histogram")


def family_lines(family, number, flags):
    pb = schema()
    T = pb.MetricType
    name = family.name
    if not name:
        raise Failure("message #%d: a family without a name" % number)
    if family.type not in T.values():
        raise Failure("family %s: unknown type %d" % (name, family.type))
    field = {T.COUNTER: "counter", T.GAUGE: "gauge", T.SUMMARY: "summary", T.UNTYPED: "untyped",
             T.HISTOGRAM: "histogram", T.GAUGE_HISTOGRAM: "histogram"}[family.type]
    lines = []
    for m_number, metric in enumerate(family.metric, 1):
        where = "family %s metric #%d" % (name, m_number)
        labels = label_dict(metric.label, where)
        present = [f for f in VALUE_FIELDS if metric.HasField(f)]
        if present != [field]:
            raise Failure("%s: type %s needs exactly the %s field, has %s"
                          % (where, T.Name(family.type), field, ", ".join(present) or "none"))
        if field in ("gauge", "untyped"):
            lines.append("%s %s" % (series(name, labels), fmt(getattr(metric, field).value)))
        elif field == "counter":
            c = metric.counter
            sample = series(name, labels)
            lines.append("%s %s" % (sample, fmt(c.value)))
            if "--exemplars" in flags and c.HasField("exemplar"):
                lines.append(exemplar_line(sample, c.exemplar, where))
            if "--created" in flags and c.HasField("created_timestamp"):
                base = name[:-len("_total")] if name.endswith("_total") else name
                lines.append("%s %s" % (series(base + "_created", labels), seconds_text(c.created_timestamp)))
        elif field == "summary":
            s = metric.summary
            for q in s.quantile:
                lines.append("%s %s" % (series(name, labels, [("quantile", le_text(q.quantile))]), fmt(q.value)))
            lines.append("%s %s" % (series(name + "_sum", labels), fmt(s.sample_sum)))
            lines.append("%s %s" % (series(name + "_count", labels), fmt(s.sample_count)))
            if "--created" in flags and s.HasField("created_timestamp"):
                lines.append("%s %s" % (series(name + "_created", labels), seconds_text(s.created_timestamp)))
        else:
            lines.extend(histogram_lines(name, labels, metric.histogram, flags, where))
    return lines


def decode(data, flags=()):
    """The sorted sample lines of a delimited body (bytes)."""
    lines = []
    for number, body in enumerate(split_delimited(data), 1):
        lines.extend(family_lines(parse_family(body, number), number, flags))
    return sorted(lines)


# ---------------------------------------------------------------------------
# Self-test

def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def delimited(messages):
    out = b""
    for m in messages:
        body = m if isinstance(m, bytes) else m.SerializeToString()
        out += varint(len(body)) + body
    return out


def self_test_families():
    pb = schema()
    T = pb.MetricType
    families = []

    def labels(metric, **pairs):
        for k, v in pairs.items():
            metric.label.add(name=k, value=v)

    f = pb.MetricFamily(name="requests_total", help="Requests.", type=T.COUNTER)
    m = f.metric.add()
    labels(m, path="/a", code="200")
    m.counter.value = 7
    m.counter.exemplar.label.add(name="trace_id", value="abc")
    m.counter.exemplar.value = 0.5
    m.counter.exemplar.timestamp.seconds = 1712345678
    m.counter.exemplar.timestamp.nanos = 123000000
    m.counter.created_timestamp.seconds = 1712340000
    m.counter.created_timestamp.nanos = 500000000
    m = f.metric.add()
    labels(m, path='/q"x\\y\nz', code="500")
    m.counter.value = 1
    families.append(f)

    f = pb.MetricFamily(name="temperature_celsius", type=T.GAUGE)
    f.metric.add().gauge.value = -1.5
    m = f.metric.add()
    labels(m, room="x")
    m.gauge.value = math.nan
    families.append(f)

    f = pb.MetricFamily(name="jobs", type=T.UNTYPED)
    f.metric.add().untyped.value = math.inf
    families.append(f)

    f = pb.MetricFamily(name="latency_seconds", type=T.HISTOGRAM)
    m = f.metric.add()
    labels(m, service="web")
    h = m.histogram
    h.sample_count, h.sample_sum = 5, 3.25
    for bound, cumulative in ((0.005, 1), (0.1, 3), (1, 4), (2.5, 4)):
        h.bucket.add(upper_bound=bound, cumulative_count=cumulative)
    h.bucket[1].exemplar.label.add(name="trace_id", value="t1")
    h.bucket[1].exemplar.value = 0.07
    h.created_timestamp.seconds, h.created_timestamp.nanos = 1712340000, 250000000
    m = f.metric.add()
    labels(m, service="api")
    h = m.histogram
    h.sample_count, h.sample_sum = 2, 0.5
    h.bucket.add(upper_bound=1e-05, cumulative_count=1)
    h.bucket.add(upper_bound=math.inf, cumulative_count=2)
    families.append(f)

    f = pb.MetricFamily(name="rpc_duration_seconds", type=T.HISTOGRAM)
    h = f.metric.add().histogram
    h.sample_count, h.sample_sum = 12, 9.5
    h.schema, h.zero_threshold, h.zero_count = 3, 0.001, 2
    h.positive_span.add(offset=-2, length=2)
    h.positive_span.add(offset=3, length=3)
    h.positive_delta.extend([1, 1, -1, 2, -2])   # counts 1 2 1 3 1 at -2 -1 3 4 5
    h.negative_span.add(offset=0, length=2)
    h.negative_delta.extend([1, 0])              # counts 1 1 at 0 1
    e = h.exemplars.add(value=0.3)
    e.label.add(name="trace_id", value="n1")
    e.timestamp.seconds, e.timestamp.nanos = 1712345678, 500000000
    m = f.metric.add()
    labels(m, le_free="empty")
    h = m.histogram
    h.schema = 0
    h.positive_span.add(offset=0, length=0)      # the no-op span of an empty native histogram
    families.append(f)

    f = pb.MetricFamily(name="queue_depth", type=T.GAUGE_HISTOGRAM)
    h = f.metric.add().histogram
    h.sample_count_float, h.sample_sum = 2.5, 4.0
    h.schema, h.zero_count_float = -1, 0.5
    h.positive_span.add(offset=1, length=2)
    h.positive_count.extend([0.5, 1.5])
    families.append(f)
    return families


SELF_TEST_EXPECTED = {
    (): [
        'jobs{} +Inf',
        'latency_seconds_bucket{le="+Inf",service="api"} 2.0',
        'latency_seconds_bucket{le="+Inf",service="web"} 5.0',
        'latency_seconds_bucket{le="0.005",service="web"} 1.0',
        'latency_seconds_bucket{le="0.1",service="web"} 3.0',
        'latency_seconds_bucket{le="1",service="web"} 4.0',
        'latency_seconds_bucket{le="1e-05",service="api"} 1.0',
        'latency_seconds_bucket{le="2.5",service="web"} 4.0',
        'latency_seconds_count{service="api"} 2.0',
        'latency_seconds_count{service="web"} 5.0',
        'latency_seconds_sum{service="api"} 0.5',
        'latency_seconds_sum{service="web"} 3.25',
        'queue_depth_bucket{le="+Inf"} 2.5',
        'queue_depth_count{} 2.5',
        'queue_depth_sum{} 4.0',
        'requests_total{code="200",path="/a"} 7.0',
        'requests_total{code="500",path="/q\\"x\\\\y\\nz"} 1.0',
        'rpc_duration_seconds_bucket{le="+Inf",le_free="empty"} 0.0',
        'rpc_duration_seconds_bucket{le="+Inf"} 12.0',
        'rpc_duration_seconds_count{le_free="empty"} 0.0',
        'rpc_duration_seconds_count{} 12.0',
        'rpc_duration_seconds_sum{le_free="empty"} 0.0',
        'rpc_duration_seconds_sum{} 9.5',
        'temperature_celsius{room="x"} NaN',
        'temperature_celsius{} -1.5',
    ],
    ("--native",): [
        'queue_depth{} native schema=-1 zero_threshold=0.0 zero_count=0.5 count=2.5 sum=4.0 positive=[1:0.5,2:1.5] negative=[]',
        'rpc_duration_seconds{le_free="empty"} native schema=0 zero_threshold=0.0 zero_count=0.0 count=0.0 sum=0.0 positive=[] negative=[]',
        'rpc_duration_seconds{} native schema=3 zero_threshold=0.001 zero_count=2.0 count=12.0 sum=9.5 '
        'positive=[-2:1.0,-1:2.0,3:1.0,4:3.0,5:1.0] negative=[0:1.0,1:1.0]',
    ],
    ("--exemplars",): [
        'latency_seconds_bucket{le="0.1",service="web"} exemplar {trace_id="t1"} 0.07 -',
        'requests_total{code="200",path="/a"} exemplar {trace_id="abc"} 0.5 1712345678.123',
        'rpc_duration_seconds_native_exemplar{} exemplar {trace_id="n1"} 0.3 1712345678.500',
    ],
    ("--created",): [
        'latency_seconds_created{service="web"} 1712340000.250',
        'requests_created{code="200",path="/a"} 1712340000.500',
    ],
}


def self_test():
    pb = schema()
    T = pb.MetricType
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append("%s:\n  got:  %s\n  want: %s" % (what, "\n        ".join(got), "\n        ".join(want)))

    data = delimited(self_test_families())
    base = SELF_TEST_EXPECTED[()]
    for flags, extra in SELF_TEST_EXPECTED.items():
        check("flags %s" % (list(flags),), decode(data, flags), sorted(base + extra if flags else base))
    every = sorted(sum(SELF_TEST_EXPECTED.values(), []))
    check("all flags", decode(data, ("--native", "--exemplars", "--created")), every)
    check("empty body", decode(b""), [])

    # Repeated scalars written unpacked (one tag per value) decode the same.
    # Histogram: schema=3 (field 5, zigzag 6), sample_count=3 (field 1),
    # positive_span {offset 0 length 2} (field 12), positive_delta 1, 1
    # unpacked (field 13, varint, zigzag 2 each).
    span = bytes([0x08, 0x00, 0x10, 0x02])
    histogram = bytes([0x28, 0x06, 0x08, 0x03, 0x62, len(span)]) + span + bytes([0x68, 0x02, 0x68, 0x02])
    metric = bytes([0x3A, len(histogram)]) + histogram
    family = b"\x0a\x01h" + bytes([0x18, T.HISTOGRAM, 0x22, len(metric)]) + metric
    check("unpacked deltas", decode(delimited([family]), ("--native",)), [
        'h_bucket{le="+Inf"} 3.0', 'h_count{} 3.0', 'h_sum{} 0.0',
        'h{} native schema=3 zero_threshold=0.0 zero_count=0.0 count=3.0 sum=0.0 positive=[0:1.0,1:2.0] negative=[]'])

    def broken(what, data, wanted, flags=()):
        try:
            lines = decode(data, flags)
        except Failure as e:
            if wanted not in str(e):
                failures.append("%s: message %r lacks %r" % (what, str(e), wanted))
            return
        failures.append("%s: decoded without complaint: %r" % (what, lines))

    def histogram_family(fill):
        f = pb.MetricFamily(name="h", type=T.HISTOGRAM)
        fill(f.metric.add().histogram)
        return delimited([f])

    good = delimited(self_test_families()[:1])
    broken("truncated prefix", good + b"\x80", "truncated length prefix")
    broken("truncated message", good[:-1], "truncated message #1")
    broken("bad message", delimited([b"\x0a\x05ab"]), "does not parse")
    broken("unknown field", delimited([b"\x0a\x01x\x48\x01"]), "not in docs/metrics.proto")
    broken("wrong wire type", delimited([b"\x0a\x01x\x1d\x00\x00\x00\x00"]), "not in docs/metrics.proto")
    broken("no name", delimited([pb.MetricFamily(type=T.GAUGE)]), "without a name")
    f = pb.MetricFamily(name="c", type=T.COUNTER)
    f.metric.add().gauge.value = 1
    broken("wrong value field", delimited([f]), "needs exactly the counter field")
    f = pb.MetricFamily(name="g", type=T.GAUGE)
    m = f.metric.add()
    m.gauge.value = 1
    m.label.add(name="a", value="1")
    m.label.add(name="a", value="2")
    broken("duplicate label", delimited([f]), "label a given twice")

    def not_cumulative(h):
        h.sample_count = 5
        h.bucket.add(upper_bound=1, cumulative_count=3)
        h.bucket.add(upper_bound=2, cumulative_count=2)
    broken("not cumulative", histogram_family(not_cumulative), "not cumulative")

    def bounds_backwards(h):
        h.sample_count = 5
        h.bucket.add(upper_bound=2, cumulative_count=1)
        h.bucket.add(upper_bound=1, cumulative_count=2)
    broken("bounds backwards", histogram_family(bounds_backwards), "not increasing")

    def inf_not_count(h):
        h.sample_count = 5
        h.bucket.add(upper_bound=math.inf, cumulative_count=4)
    broken("+Inf != count", histogram_family(inf_not_count), "+Inf bucket 4.0 != count 5.0")

    def above_count(h):
        h.sample_count = 1
        h.bucket.add(upper_bound=1, cumulative_count=2)
    broken("bucket above count", histogram_family(above_count), "more than count")

    def few_deltas(h):
        h.sample_count, h.schema = 9, 0
        h.positive_span.add(offset=0, length=3)
        h.positive_delta.extend([1, 1])
    broken("too few deltas", histogram_family(few_deltas), "cover 3 buckets but there are 2 deltas")

    def negative_count(h):
        h.sample_count, h.schema = 9, 0
        h.negative_span.add(offset=0, length=2)
        h.negative_delta.extend([1, -2])
    broken("negative bucket count", histogram_family(negative_count), "negative bucket 1 has count -1.0")

    def negative_gap(h):
        h.sample_count, h.schema = 9, 0
        h.positive_span.add(offset=0, length=1)
        h.positive_span.add(offset=-1, length=1)
        h.positive_delta.extend([1, 0])
    broken("negative gap", histogram_family(negative_gap), "span #2 has a negative offset")

    def over_count(h):
        h.sample_count, h.schema, h.zero_count = 2, 0, 1
        h.positive_span.add(offset=0, length=1)
        h.positive_delta.extend([2])
    broken("buckets over count", histogram_family(over_count), "hold 3.0 observations, count is 2.0")

    def deltas_and_counts(h):
        h.sample_count, h.schema = 1, 0
        h.positive_span.add(offset=0, length=1)
        h.positive_delta.extend([1])
        h.positive_count.extend([1.0])
    broken("deltas and counts", histogram_family(deltas_and_counts), "both positive_delta and positive_count")

    # The command line: exit status and message on a broken body.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "body")
        with open(path, "wb") as f:
            f.write(data)
        r = subprocess.run([sys.executable, os.path.abspath(__file__), path, "--native", "--exemplars", "--created"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        check("command line", [str(r.returncode)] + r.stdout.splitlines(), ["0"] + every)
        with open(path, "wb") as f:
            f.write(data[:-3])
        r = subprocess.run([sys.executable, os.path.abspath(__file__), path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if r.returncode != 1 or "truncated message" not in r.stderr or r.stdout:
            failures.append("command line, truncated body: rc %d, stdout %r, stderr %r" % (r.returncode, r.stdout, r.stderr))

    for le, text in ((0.005, "0.005"), (1.0, "1"), (2.5, "2.5"), (10.0, "10"), (1e6, "1000000"), (0.0001, "0.0001"),
                     (1e-05, "1e-05"), (1e16, "1e+16"), (-0.0, "-0"), (math.inf, "+Inf"), (-math.inf, "-Inf")):
        if le_text(le) != text:
            failures.append("le_text(%r) = %r, want %r" % (le, le_text(le), text))

    if failures:
        raise SystemExit("proto_samples.py self-test FAILED:\n" + "\n".join(failures))
    print("proto_samples.py self-test passed")


FLAGS = ("--native", "--exemplars", "--created")

if __name__ == "__main__":
    try:
        if sys.argv[1:] == ["--self-test"]:
            self_test()
        else:
            if len(sys.argv) < 2 or sys.argv[1].startswith("--") or any(a not in FLAGS for a in sys.argv[2:]):
                raise SystemExit("usage: proto_samples.py FILE [--native] [--exemplars] [--created] | --self-test")
            with open(sys.argv[1], "rb") as f:
                data = f.read()
            for line in decode(data, set(sys.argv[2:])):
                print(line)
    except Failure as e:
        raise SystemExit("proto_samples.py: %s" % e)
