#!/usr/bin/env python3
"""A synthetic recording for sizing `nodepulse view`: SERIES block-latency series at a
10 s interval for HOURS hours, in the console JSON format `nodepulse record` writes
(series only). Each series' samples are log-normal around its own median, and one
series slows 4x for ten minutes in the middle, so the report has an alarm to draw.

    python3 xtask/view/synth.py SERIES HOURS > rec.jsonl
"""
import datetime
import json
import math
import random
import sys

series, hours = int(sys.argv[1]), float(sys.argv[2])
reports = int(hours * 360)
rng = random.Random(7)
t0 = datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc)
medians = [rng.uniform(20e3, 2e6) for _ in range(series)]
# Precomputed bucket shapes (scale 3: index = ceil(log2(v) * 8) - 1), shifted per series.
shape = {}
for _ in range(4000):
    b = math.ceil(math.log2(math.exp(rng.gauss(0, 0.6))) * 8)
    shape[b] = shape.get(b, 0) + 1
lo, hi = min(shape), max(shape)
base = [shape.get(i, 0) for i in range(lo, hi + 1)]
out = sys.stdout
for r in range(reports):
    end = t0 + datetime.timedelta(seconds=10 * (r + 1))
    items = []
    for s in range(series):
        slow = 16 if s == 0 and reports * 0.5 <= r < reports * 0.5 + 60 else 0
        centre = math.ceil(math.log2(medians[s]) * 8) + slow
        k = rng.randint(1, 4)
        counts = [c // k for c in base]
        n = sum(counts)
        items.append(
            '{"family":"block.io.latency","labels":{"device":"vd%s","op":"%s"},"unit":"ns",'
            '"count":%d,"sum":0,"histogram":{"scale":3,"zero_count":0,"offset":%d,"counts":%s}}'
            % (s // 2, "read" if s % 2 == 0 else "write", n, centre + lo, json.dumps(counts, separators=(",", ":")))
        )
    out.write('{"time":"%s","interval_s":10.0,"node":"synth","series":[%s]}\n'
              % (end.strftime("%Y-%m-%dT%H:%M:%SZ"), ",".join(items)))
