"""Draws bench-out/accuracy.png from the benchmark's CSV files: measured vs true delay for
millilag (gtid-wait, poll) per heartbeat, and the stall peaks of all three tools."""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out")
rows = list(csv.DictReader(open(out / "measurements.csv")))
stalls = list(csv.DictReader(open(out / "stalls.csv")))

fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5.5))
for method, colour in (("gtid-wait", "tab:blue"), ("poll", "tab:orange")):
    pts = [(int(r["true_us"]) / 1e3, int(r["measured_us"]) / 1e3) for r in rows
           if r["method"] == method and r["status"] == "ok" and int(r["true_us"]) > 0]
    a.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, alpha=0.5, c=colour,
              label=f"millilag {method} ({len(pts)} heartbeats)")
lim = [0.05, 3000]
a.plot(lim, lim, "k--", lw=0.8, label="measured = true")
a.set_xscale("log")
a.set_yscale("log")
a.set_xlim(lim)
a.set_ylim(lim)
a.set_xlabel("true delay (replica apply time - commit), ms")
a.set_ylabel("measured delay, ms")
a.set_title("Every heartbeat, both replicas")
a.legend(loc="upper left", fontsize=8)

labels = {"gtid-wait": ("millilag gtid-wait", "o"), "poll": ("millilag poll", "s"),
          "pt-heartbeat": ("pt-heartbeat --monitor (0.01 s)", "x")}
for tool, (label, marker) in labels.items():
    pts = [(int(s["true_peak_us"]) / 1e3, (int(s["measured_peak_us"]) - int(s["true_peak_us"])) / 1e3)
           for s in stalls if s["tool"] == tool]
    b.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
b.axhline(0, color="k", lw=0.8)
b.set_xscale("log")
b.set_xlabel("true stall peak delay, ms")
b.set_ylabel("measured peak - true peak, ms")
b.set_title("Stall peaks on the stalled replica")
b.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "accuracy.png", dpi=110)
print(f"wrote {out / 'accuracy.png'}")
