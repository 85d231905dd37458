"""Parses Prometheus text (stdin) with prometheus_client's own parser and
prints every family as JSON: {name: {"type": ..., "samples": [[sample
name, labels, value], ...]}}. A line the parser refuses fails the script."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    if f.name in families:
        sys.exit(f"family {f.name} twice")
    families[f.name] = {
        "type": f.type,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(families))
