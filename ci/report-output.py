#!/usr/bin/env python3
"""The sha256 an image's build report gives for one of its outputs, or nothing if the image has
none: ci/report-output.py REPORT.build-report.json NAME (e.g. cjdroute)."""
import json
import sys

print(json.load(open(sys.argv[1]))["outputs"].get(sys.argv[2]) or "")
