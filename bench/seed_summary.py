#!/usr/bin/env python3
"""bench/seed_summary.py: lipc against the PyTorch peer over several seeds.

    bench/seed_summary.py DIR...

Each DIR is the --out of one `bench/train_compare.sh --seed S` run (or holds
the same files): lipc-train.json, lipc-certify.json (sound K_sub),
lipc-certify-estimate.json (power-iteration K_sub), peer.json, and, when the
run was not --no-cross, peer-lipc-certify.json (the peer's weights through
lipc's sound certifier). Prints, in markdown, the per-seed differences in
points (lipc minus the peer) for three pairings, then their mean and sample
standard deviation over the seeds, the 95 % confidence interval of that mean
(Student's t) and how many seeds are behind, even and ahead:

  sound vs estimate   lipc's certificate against the peer's estimate (the
                      comparison of the issue: lipc pays for its soundness)
  estimate vs estimate
                      both networks certified the same way (power-iteration
                      K_sub): what the training alone gives
  sound vs sound      both through lipc's sound certifier (needs the cross file)

and, where the DIR holds a run of `train_compare.sh --control` (lipc-portable-
certify.json and lipc-portable-certify-estimate.json: lipc again, same recipe,
seed, initial weights and batches, compiled with --portable, so only its
rounding differs), three more:

  control, sound      lipc --portable minus lipc: what a change of rounding
                      alone moves lipc's own result
  control, estimate   the same with power-iteration K_sub
  lipc's two runs (mean), sound vs estimate
                      the mean of lipc's two runs minus the peer: the first
                      pairing with lipc's share of the noise halved

The training is chaotic: rounding differences of one step grow to ~10 % of the
gradient within ten steps, so the control rows are the noise floor against
which the lipc-peer rows are read.

Only the standard library: it runs wherever the JSON files are.
"""
import json
import math
import os
import sys


def load(d, name):
    path = os.path.join(d, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            sys.exit(f"seed_summary: {path} is not JSON ({e}): an unfinished run?")


def metrics(cert, keys):
    """Clean accuracy, then the VRA at each radius: the keys are certify
    --json's (the peer's JSON writes them the same way)."""
    return [cert["clean_acc"]] + [cert["vra"][k] for k in keys]


def mean_sd(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# Student's t, two-sided 95 %: the 0.975 quantile for 1-30 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def ci95(xs):
    """The 95 % confidence interval of the mean of xs (independent seeds,
    differences taken as normal): mean -+ t * sd / sqrt(n)."""
    m, sd = mean_sd(xs)
    df = len(xs) - 1
    if df < 1:
        return None
    t = T975[df - 1] if df <= len(T975) else 1.960 + 2.4 / df
    half = t * sd / math.sqrt(len(xs))
    return m - half, m + half


def main(dirs):
    if not dirs:
        sys.exit(__doc__.split("\n\n")[1])
    runs = []
    for d in dirs:
        files = {n: load(d, n + ".json") for n in
                 ("lipc-train", "lipc-certify", "lipc-certify-estimate", "peer",
                  "peer-lipc-certify", "lipc-portable-certify",
                  "lipc-portable-certify-estimate")}
        optional = ("peer-lipc-certify", "lipc-portable-certify", "lipc-portable-certify-estimate")
        missing = [n for n, v in files.items() if v is None and n not in optional]
        if missing:
            sys.exit(f"seed_summary: {d} lacks {', '.join(n + '.json' for n in missing)}")
        runs.append((d, files))
    radii = sorted(runs[0][1]["lipc-certify"]["vra"], key=float)
    head = ["seed", "pairing", "clean"] + [f"VRA {e}" for e in radii]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    pairings = [("sound vs estimate", "lipc-certify", "peer"),
                ("estimate vs estimate", "lipc-certify-estimate", "peer"),
                ("sound vs sound", "lipc-certify", "peer-lipc-certify"),
                ("control, sound", "lipc-portable-certify", "lipc-certify"),
                ("control, estimate", "lipc-portable-certify-estimate", "lipc-certify-estimate"),
                ("lipc's two runs (mean), sound vs estimate",
                 ("lipc-certify", "lipc-portable-certify"), "peer")]
    diffs = {name: [] for name, _, _ in pairings}
    times = []
    for d, f in runs:
        seed = f["peer"].get("seed", "?")
        times.append((f["lipc-train"]["seconds"], f["peer"]["train_s"]))
        for name, a, b in pairings:
            a = a if isinstance(a, tuple) else (a,)
            if any(f[n] is None for n in a + (b,)):
                continue
            ma = [sum(col) / len(a) for col in zip(*(metrics(f[n], radii) for n in a))]
            delta = [100 * (x - y) for x, y in zip(ma, metrics(f[b], radii))]
            diffs[name].append(delta)
            print(f"| {seed} | {name} | " + " | ".join("%+.2f" % x for x in delta) + " |")
    for name, _, _ in pairings:
        rows = diffs[name]
        if not rows:
            continue
        cells = []
        for col in zip(*rows):
            m, sd = mean_sd(col)
            cells.append("%+.2f" % m + ("" if math.isnan(sd) else " ± %.2f" % sd))
        print(f"| mean ± sd ({len(rows)}) | {name} | " + " | ".join(cells) + " |")
        if len(rows) >= 2:
            cells = ["[%+.2f, %+.2f]" % ci95(col) for col in zip(*rows)]
            print(f"| 95 % CI of the mean ({len(rows)}) | {name} | " + " | ".join(cells) + " |")
            cells = ["%d / %d / %d" % (sum(x < 0 for x in col), sum(x == 0 for x in col),
                                       sum(x > 0 for x in col)) for col in zip(*rows)]
            print(f"| seeds behind / even / ahead | {name} | " + " | ".join(cells) + " |")
    ratio = [p / l for l, p in times]
    print()
    print("Training time, lipc against the peer: " +
          ", ".join("%.0f s vs %.0f s" % t for t in times) +
          " (%.2f-%.2fx faster)." % (min(ratio), max(ratio)))


if __name__ == "__main__":
    main(sys.argv[1:])
