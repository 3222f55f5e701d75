"""Draws bench-out/accuracy.png from the benchmark's CSV files (bench/src/report.rs):
measured vs true delay per millilag heartbeat, the distribution of every tool's error, the stall
peaks, and one stall's time line with the true lag and what each tool reported."""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out")


def rows(name):
    return list(csv.DictReader(open(out / name)))


meas = rows("measurements.csv")
pt = rows("pt_samples.csv")
stalls = rows("stalls.csv")
trace = rows("lag_trace.csv")
STYLE = {
    "gtid-wait": ("millilag gtid-wait", "tab:blue", "o"),
    "poll": ("millilag poll", "tab:orange", "s"),
    "pt-best": ("pt-heartbeat 0.01 s / skew 0.001", "tab:red", "x"),
    "pt-default": ("pt-heartbeat defaults", "tab:gray", "+"),
}
STEADY_OR_STALL = ("steady state", "during stalls")

fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(14, 10))

# Every exact millilag measurement against its heartbeat's true delay.
for tool in ("gtid-wait", "poll"):
    label, colour, _ = STYLE[tool]
    pts = [(int(r["true_us"]) / 1e3, int(r["measured_us"]) / 1e3) for r in meas
           if r["tool"] == tool and r["status"] == "ok" and r["upper_bound"] == "false"
           and r["true_us"]]
    a.scatter([p[0] for p in pts], [max(p[1], 0.01) for p in pts], s=5, alpha=0.4, c=colour,
              label=f"{label} ({len(pts)} measurements)")
lim = [0.01, 3000]
a.plot(lim, lim, "k--", lw=0.8, label="measured = true")
a.set_xscale("log")
a.set_yscale("log")
a.set_xlim(lim)
a.set_ylim(lim)
a.set_xlabel("true delay (replica row change - primary row change, triggers), ms")
a.set_ylabel("delay millilag reported, ms")
a.set_title("Every heartbeat, both replicas, all windows")
a.legend(loc="upper left", fontsize=8)

# Distribution of |error|, steady state and during stalls.
for tool, (label, colour, _) in STYLE.items():
    if tool in ("gtid-wait", "poll"):
        e = [abs(int(r["measured_us"]) - int(r["true_us"])) / 1e3 for r in meas
             if r["tool"] == tool and r["status"] == "ok" and r["upper_bound"] == "false"
             and r["true_us"] and r["window"] in STEADY_OR_STALL]
    else:
        e = [abs(float(r["reading_s"]) * 1e3 - int(r["true_lag_us"]) / 1e3) for r in pt
             if r["tool"] == tool and r["window"] in STEADY_OR_STALL]
    if not e:
        continue
    e.sort()
    b.plot([max(x, 0.001) for x in e], [(i + 1) / len(e) for i in range(len(e))], c=colour,
           label=f"{label} ({len(e)})")
b.axvline(1, color="k", lw=0.6, ls=":")
b.set_xscale("log")
b.set_xlabel("abs error against the truth, ms (steady state and during stalls)")
b.set_ylabel("share of measurements at or below")
b.set_title("Error distribution (pt-heartbeat: every --monitor line)")
b.legend(fontsize=8, loc="lower right")

# Stall peaks: reported - true, against the true peak.
for tool, (label, colour, marker) in STYLE.items():
    pts = [(int(s["true_peak_us"]) / 1e3,
            (int(s["reported_peak_us"] or 0) - int(s["true_peak_us"])) / 1e3)
           for s in stalls if s["tool"] == tool]
    if pts:
        c.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, c=colour, label=label)
c.axhline(0, color="k", lw=0.8)
c.set_xscale("log")
c.set_yscale("symlog", linthresh=1)
c.set_xlabel("true peak lag of the stall, ms")
c.set_ylabel("reported peak - true peak, ms (symlog)")
c.set_title("Stall peaks (both replicas, relaxed and durable)")
c.legend(fontsize=8)

# One stall's time line: each tool had its own stall, so each has its own true-lag line.
first = True
for tool, (label, colour, marker) in STYLE.items():
    t = [r for r in trace if r["tool"] == tool]
    if not t:
        continue
    line = [r for r in t if r["series"] == "true"]
    d.plot([float(r["t_ms"]) for r in line], [float(r["lag_ms"]) for r in line], c=colour,
           lw=0.8, alpha=0.6, label="true lag (thin lines)" if first else None)
    first = False
    rep = [r for r in t if r["series"] == "reported"]
    d.scatter([float(r["t_ms"]) for r in rep], [float(r["lag_ms"]) for r in rep], s=14,
              marker=marker, c=colour, label=label)
d.set_xlabel("ms from sending STOP SLAVE SQL_THREAD (each tool's own ~200 ms stall on replica 1)")
d.set_ylabel("lag, ms")
d.set_title("One stall: true lag and what each tool reported, when")
d.legend(fontsize=8)

fig.tight_layout()
fig.savefig(out / "accuracy.png", dpi=100)
print(f"wrote {out / 'accuracy.png'}")
