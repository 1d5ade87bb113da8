#!/usr/bin/env python3
"""The partitions each shape of loadtest/query/skewed.js plans and touches.

Run by loadtest/query/run.sh with PARTITIONS=1: the API's read pool then loads
auto_explain (READ_DATABASE_URL's options), which logs the plan of every statement
it runs, with the rows each node produced. For each shape this asks it ITERATIONS
times (k6, one shape at a time) and reads the plans logged meanwhile from the
PostgreSQL log. Per request it reports:

- statements: the statements the API ran for the request;
- planned: the partitions of `events` in those plans, counting the ones a generic
  plan removed when it started ("Subplans Removed");
- touched: the partition scans that ran (a node the executor never reached, or
  removed at start, is not touched);
- estimates: the EXPLAINs a `total` estimate asked for (planned, never run), and
  the partitions they planned.

The stream poller's head query (`api::tail`, every 200 ms on the read pool whether
or not a stream is open) is left out: it is no request's.

Usage: partitions.py BASE_URL PG_LOG ITERATIONS [SHAPE...]
"""
import json
import os
import re
import subprocess
import sys
import time

base, log, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
script = os.path.join(os.path.dirname(__file__), "skewed.js")
shapes = sys.argv[4:] or re.findall(r"^  (\w+): \[\d+, ", open(script).read(), re.M)
PARTITION = re.compile(r"^events_(p\d{8}|default)$")


def plans(text):
    """The JSON plans auto_explain logged in `text`."""
    decoder = json.JSONDecoder()
    at = 0
    while True:
        i = text.find('"Query Text"', at)
        if i < 0:
            return
        start = text.rfind("{", 0, i)
        try:
            doc, end = decoder.raw_decode(text, start)
        except ValueError:
            at = i + 1
            continue
        at = end
        yield doc


def walk(node, counts):
    rel = node.get("Relation Name", "")
    if PARTITION.match(rel):
        counts["planned"] += 1
        if node.get("Actual Loops", 0) > 0:
            counts["touched"] += 1
    counts["planned"] += node.get("Subplans Removed", 0)
    for child in node.get("Plans", []):
        walk(child, counts)


print("| shape | statements | partitions planned | partitions touched | estimates (partitions planned) |")
print("|---|---|---|---|---|")
for shape in shapes:
    with open(log, "rb") as f:
        f.seek(0, 2)
        offset = f.tell()
    subprocess.run(
        ["k6", "run", "--quiet", "-e", f"BASE_URL={base}", "-e", f"SHAPES={shape}",
         "-e", f"ITERATIONS={iterations}", script],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # thresholds fail under auto_explain
    )
    time.sleep(0.5)
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    counts = {"statements": 0, "planned": 0, "touched": 0}
    estimates = {"statements": 0, "planned": 0, "touched": 0}
    for doc in plans(text):
        query = doc.get("Query Text", "")
        if query.startswith("SELECT txid, seq FROM events WHERE txid <"):
            continue
        into = estimates if query.startswith("EXPLAIN") else counts
        into["statements"] += 1
        walk(doc["Plan"], into)
    n = iterations
    print(f"| {shape} | {counts['statements'] / n:.1f} | {counts['planned'] / n:.0f} "
          f"| {counts['touched'] / n:.0f} | {estimates['statements'] / n:.1f} ({estimates['planned'] / n:.0f}) |")
