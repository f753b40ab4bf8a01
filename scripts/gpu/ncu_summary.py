#!/usr/bin/env python3
"""Where a training step's GPU time and memory traffic go, kernel by kernel, from Nsight Compute.

scripts/gpu-check.sh runs
    ncu --csv --print-units base --profile-from-start off --clock-control none
        --cache-control none --print-kernel-base function
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum
        build-gpu/bench/bench_gpu_train --configs gpt2 --steps 1 --profiler-range ...
(bench_gpu_train --profiler-range brackets its timed steps with cudaProfilerStart/Stop, so only
those are profiled) and passes the output here. Each kernel runs alone under ncu, at the card's
normal clocks and without cache flushes; its duration and DRAM bytes are added up per kernel name
and printed slowest first, with the bandwidth each reached: a memory-bound kernel far below the
card's copy bandwidth (about 3.0 TB/s on the H100, 4.0 on the H200, bench_gpu_averaging) has room,
a product with few bytes per flop is bound by its tensor cores instead.

    python3 scripts/gpu/ncu_summary.py NCU_OUTPUT [--steps S] [--top K]
    python3 scripts/gpu/ncu_summary.py --self-test
"""
import argparse
import csv
import io
import sys
from collections import defaultdict

TIME = "gpu__time_duration.sum"
READ = "dram__bytes_read.sum"
WRITE = "dram__bytes_write.sum"
# Optional percentages (gpu-check's ncu-detail step), each averaged over a kernel's launches
# weighted by their time, in columns of their own: the SM's and the memory system's throughput
# as a share of their peaks (Nsight Compute's "speed of light"), the warps resident on an SM as a
# share of its maximum (achieved occupancy), and the cycles in which a scheduler issued an
# instruction. A kernel low on all four waits on latency (too little in flight); one high on SM%
# and issue% is bound by its instructions.
DETAIL = {
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "SM%",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "mem%",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occ%",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue%",
}

# Units ncu may print (--print-units base asks for the first of each, but be lenient).
SCALE = {
    "nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
    "second": 1.0, "s": 1.0,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
    "KB": 1e3, "MB": 1e6, "GB": 1e9,
    "%": 1.0,
}


def parse(text):
    """{(launch id, kernel name): {metric: value in seconds or bytes}} from ncu's CSV output,
    whatever precedes its header (==PROF== lines, the program's own output)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if line.startswith('"') and '"Kernel Name"' in line and '"Metric Value"' in line),
                 None)
    if start is None:
        raise ValueError("no ncu CSV header (\"Kernel Name\" ... \"Metric Value\") in the output")
    body = [line for line in lines[start:] if line.startswith('"')]
    launches = defaultdict(dict)
    for row in csv.DictReader(io.StringIO("\n".join(body))):
        name, metric = row.get("Kernel Name"), row.get("Metric Name")
        if metric not in (TIME, READ, WRITE) and metric not in DETAIL:
            continue
        unit = row.get("Metric Unit", "")
        if unit not in SCALE:
            raise ValueError(f"unit {unit!r} of {metric} not known")
        value = float(row["Metric Value"].replace(",", "")) * SCALE[unit]
        launches[(row.get("ID"), name)][metric] = value
    return launches


def summarize(launches, steps, top):
    per = defaultdict(lambda: [0, 0.0, 0.0])  # name -> calls, seconds, bytes
    weighted = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))  # name -> metric -> sum, time
    for (_, name), m in launches.items():
        p = per[name]
        p[0] += 1
        p[1] += m.get(TIME, 0.0)
        p[2] += m.get(READ, 0.0) + m.get(WRITE, 0.0)
        for metric in DETAIL:
            if metric in m:
                w = weighted[name][metric]
                w[0] += m[metric] * m.get(TIME, 0.0)
                w[1] += m.get(TIME, 0.0)
    shown = [metric for metric in DETAIL if any(metric in w for w in weighted.values())]
    total_s = sum(p[1] for p in per.values())
    total_b = sum(p[2] for p in per.values())
    out = [f"{len(launches)} kernel launches in {steps} step(s): {1e3 * total_s / steps:.2f} ms of "
           f"kernels a step (each alone), {total_b / steps / 1e9:.2f} GB of DRAM traffic a step",
           f"{'kernel':58} {'calls':>6} {'ms/step':>8} {'share':>6} {'GB/step':>8} {'GB/s':>7}" +
           "".join(f" {DETAIL[metric]:>6}" for metric in shown)]
    ranked = sorted(per.items(), key=lambda kv: -kv[1][1])
    for name, (calls, seconds, nbytes) in ranked[:top]:
        short = name if len(name) <= 58 else name[:55] + "..."
        rate = nbytes / seconds / 1e9 if seconds > 0 else 0.0
        cells = ""
        for metric in shown:
            total, time = weighted[name][metric] if metric in weighted[name] else (0.0, 0.0)
            cells += f" {total / time:6.1f}" if time > 0 else f" {'-':>6}"
        out.append(f"{short:58} {calls // steps:6d} {1e3 * seconds / steps:8.3f} "
                   f"{100 * seconds / total_s:5.1f}% {nbytes / steps / 1e9:8.3f} {rate:7.0f}" +
                   cells)
    if len(ranked) > top:
        rest = ranked[top:]
        seconds = sum(p[1] for _, p in rest)
        out.append(f"{'(' + str(len(rest)) + ' more kernels)':58} {'':6} "
                   f"{1e3 * seconds / steps:8.3f} {100 * seconds / total_s:5.1f}%")
    return "\n".join(out)


SAMPLE = '''bench_gpu_train output line
==PROF== Connected to process 7
==PROF== Profiling "adamw4_kernel": 0%....50%....100% - 1 pass
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","7","bench_gpu_train","h","adamw4_kernel","1","7","(256, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","1,991,614,464"
"0","7","bench_gpu_train","h","adamw4_kernel","1","7","(256, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","1,493,710,848"
"0","7","bench_gpu_train","h","adamw4_kernel","1","7","(256, 1, 1)","(65536, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","1,000,000"
"1","7","bench_gpu_train","h","convert_kernel","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Mbyte","3"
"1","7","bench_gpu_train","h","convert_kernel","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","1000000"
"1","7","bench_gpu_train","h","convert_kernel","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","2"
"2","7","bench_gpu_train","h","convert_kernel","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","2000"
==PROF== Disconnected from process 7
'''


def self_test():
    launches = parse(SAMPLE)
    assert len(launches) == 3, launches
    adamw = launches[("0", "adamw4_kernel")]
    assert adamw[TIME] == 1e-3 and adamw[READ] == 1991614464 and adamw[WRITE] == 1493710848
    assert launches[("1", "convert_kernel")][READ] == 3e6
    text = summarize(launches, steps=1, top=1)
    lines = text.splitlines()
    assert lines[0].startswith("3 kernel launches in 1 step(s): 1.00 ms"), lines[0]
    assert "3.49 GB" in lines[0], lines[0]  # 1.99 + 1.49 + 0.003 + 0.001
    assert lines[2].split()[:4] == ["adamw4_kernel", "1", "1.000", "99.6%"], lines[2]
    assert lines[2].split()[-1] == "3485", lines[2]  # 3.485 GB in 1 ms
    assert lines[3].startswith("(1 more kernels)"), lines[3]
    # the percentages, averaged over a kernel's launches by their time (1 us at 50%, 3 us at 10%)
    head = SAMPLE.splitlines()[3]
    row = ('"{id}","7","b","h","{k}","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","s","{m}","{u}","{v}"')
    rows = [row.format(id=i, k="k", m=metric, u=unit, v=value)
            for i, t, pct in (("0", "1", "50"), ("1", "3", "10"))
            for metric, unit, value in ((TIME, "usecond", t),
                                        ("sm__warps_active.avg.pct_of_peak_sustained_active", "%",
                                         pct))]
    detail = summarize(parse("\n".join([head] + rows)), steps=1, top=5).splitlines()
    assert detail[1].split()[-1] == "occ%", detail[1]
    assert detail[2].split()[0] == "k" and detail[2].split()[-1] == "20.0", detail[2]
    assert "occ%" not in lines[1], lines[1]  # no percentages, no column
    for bad in ("no header here\n", SAMPLE.replace('"nsecond"', '"fortnight"')):
        try:
            parse(bad)
        except ValueError:
            continue
        raise AssertionError("bad input accepted")
    print("ncu_summary self-test: ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", nargs="?", help="ncu's CSV output (with whatever precedes it)")
    ap.add_argument("--steps", type=int, default=1, help="training steps profiled (default 1)")
    ap.add_argument("--top", type=int, default=30, help="kernels listed (default 30)")
    ap.add_argument("--self-test", action="store_true", help="check the parser on a sample")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    if not args.output or args.steps < 1 or args.top < 1:
        ap.error("give ncu's output file, --steps >= 1 and --top >= 1")
    try:
        with open(args.output, encoding="utf-8", errors="replace") as f:
            launches = parse(f.read())
    except (OSError, ValueError) as e:
        print(f"ncu_summary: {args.output}: {e}", file=sys.stderr)
        return 1
    if not launches:
        print(f"ncu_summary: {args.output}: no kernel with the metrics {TIME}, {READ}, {WRITE}",
              file=sys.stderr)
        return 1
    print(summarize(launches, args.steps, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
