#!/usr/bin/python3
"""Writes an SVG line chart (per-thread ns/op against threads, log scales)
from the CSV that `shmetrics-bench --csv` writes. No plotting library
needed: usage  plot.py results.csv out.svg "title"."""
import csv
import math
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
title = sys.argv[3] if len(sys.argv) > 3 else "shmetrics-bench"
series = {}
for r in rows:
    series.setdefault(r["case"], []).append((int(r["threads"]), float(r["ns_per_op"])))
threads = sorted({t for points in series.values() for t, _ in points})
values = [v for points in series.values() for _, v in points if v > 0]
lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
W, H, left, right, top, bottom = 980, 560, 70, 330, 40, 50
pw, ph = W - left - right, H - top - bottom
def x(t):
    return left + (0 if len(threads) == 1 else pw * threads.index(t) / (len(threads) - 1))
def y(v):
    return top + ph * (1 - (math.log10(v) - lo) / (hi - lo))
colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"]
out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
       '<rect width="100%" height="100%" fill="white"/>',
       '<text x="%d" y="24" font-size="15">%s</text>' % (left, title)]
for e in range(lo, hi + 1):
    out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (left, left + pw, y(10 ** e), y(10 ** e)))
    out.append('<text x="%d" y="%.1f" text-anchor="end">%g ns</text>' % (left - 6, y(10 ** e) + 4, 10 ** e))
for t in threads:
    out.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ddd"/>' % (x(t), x(t), top, top + ph))
    out.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x(t), top + ph + 18, t))
out.append('<text x="%d" y="%d" text-anchor="middle">threads (each on one shared metric)</text>' % (left + pw / 2, H - 8))
for i, (name, points) in enumerate(series.items()):
    color = colors[i % len(colors)]
    path = " ".join("%s%.1f,%.1f" % ("M" if j == 0 else "L", x(t), y(max(v, 10 ** lo))) for j, (t, v) in enumerate(points))
    dash = "" if name.startswith("shmetrics") else ' stroke-dasharray="5,3"'
    out.append('<path d="%s" fill="none" stroke="%s" stroke-width="2"%s/>' % (path, color, dash))
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"%s/>' % (W - right + 15, W - right + 40, top + 16 * i, top + 16 * i, color, dash))
    out.append('<text x="%d" y="%d">%s</text>' % (W - right + 46, top + 16 * i + 4, name.replace("&", "&amp;").replace("<", "&lt;")))
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
