"""Ranges over several benchmark runs: reads DIR/summary.csv of each run given and prints
every key with its values (min-max when numeric), e.g.
`python3 bench/ranges.py bench-out-1 bench-out-2 bench-out-3 | grep steady_state.p99`."""
import csv
import sys
from collections import OrderedDict

runs = sys.argv[1:]
values = OrderedDict()
for run in runs:
    with open(f"{run}/summary.csv") as f:
        for row in csv.reader(f):
            if len(row) >= 2:
                values.setdefault(row[0], []).append(",".join(row[1:]))

for key, vs in values.items():
    try:
        nums = [float(v.rstrip("x")) for v in vs]
        unit = "x" if vs[0].endswith("x") else ""
        lo, hi = min(nums), max(nums)
        if key.endswith("_us"):
            text = f"{lo / 1e3:.2f} to {hi / 1e3:.2f} ms"
        else:
            text = f"{lo:g} to {hi:g}{unit}"
        print(f"{key}\t{text}\t({' / '.join(vs)})")
    except ValueError:
        print(f"{key}\t{' / '.join(vs)}")
