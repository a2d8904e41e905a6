"""Judges scrapes of mcpflip's /metrics with the reference parsers.

    check_scrape.py FILE...

A file ending in `.om` is parsed with prometheus_client's strict OpenMetrics
parser, one ending in `.txt` with its Prometheus text-format (0.0.4) parser.
Every histogram must be consistent: buckets in ascending `le` order with
non-decreasing counts, a last bucket `le="+Inf"` equal to `_count`, and
`_sum >= 0`. Prints one JSON object: how many files of each kind were read and
every sample name seen (with its label sets' count); exits 1 naming the file
and the problem on the first failure.
"""

import json
import math
import sys
from collections import defaultdict

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def fail(path, msg):
    print(f"{path}: {msg}", file=sys.stderr)
    sys.exit(1)


def check_histogram(path, family):
    groups = defaultdict(lambda: {"buckets": [], "count": None, "sum": None})
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        g = groups[key]
        if s.name == family.name + "_bucket":
            if "le" not in s.labels:
                fail(path, f"{family.name}{dict(key)}: a bucket without le")
            g["buckets"].append((float(s.labels["le"]), s.value, s.labels["le"]))
        elif s.name == family.name + "_count":
            g["count"] = s.value
        elif s.name == family.name + "_sum":
            g["sum"] = s.value
    for key, g in groups.items():
        where = f"{family.name}{dict(key)}"
        b = g["buckets"]
        if not b:
            fail(path, f"{where}: no buckets")
        for (le1, v1, _), (le2, v2, _) in zip(b, b[1:]):
            if not le1 < le2:
                fail(path, f"{where}: buckets not in ascending le order ({le1} then {le2})")
            if v2 < v1:
                fail(path, f"{where}: bucket le={le2} has {v2} < {v1} of le={le1} (not cumulative)")
        last_le, last_v, last_raw = b[-1]
        if not (math.isinf(last_le) and last_le > 0 and last_raw == "+Inf"):
            fail(path, f'{where}: the last bucket is le="{last_raw}", not le="+Inf"')
        if g["count"] is None or g["count"] != last_v:
            fail(path, f"{where}: +Inf bucket {last_v} != _count {g['count']}")
        if g["sum"] is None or g["sum"] < 0:
            fail(path, f"{where}: _sum is {g['sum']}")


def main(paths):
    seen = defaultdict(set)
    kinds = {"openmetrics": 0, "text": 0}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".om"):
            parse, kind = parse_openmetrics, "openmetrics"
        elif path.endswith(".txt"):
            parse, kind = parse_text, "text"
        else:
            fail(path, "neither .om nor .txt")
        try:
            families = list(parse(text))
        except Exception as e:  # the parsers raise ValueError and friends
            fail(path, f"the {kind} parser rejects it: {type(e).__name__}: {e}")
        kinds[kind] += 1
        for fam in families:
            if fam.type == "histogram":
                check_histogram(path, fam)
            for s in fam.samples:
                seen[s.name].add(tuple(sorted(s.labels.items())))
    print(
        json.dumps(
            {
                "files": kinds,
                "samples": {name: len(labels) for name, labels in sorted(seen.items())},
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
