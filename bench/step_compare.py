#!/usr/bin/python3
"""bench/step_compare.py: the first training steps of lipc's cpu target and of
the PyTorch peer, each against lipc's reference interpreter in double.

    bench/step_compare.py [--steps N] [--model FILE] [--set K=V]... [--seed S]
        [--threads T] [--data DIR] [--out DIR] [--no-ref]

All three start from lipc's initial weights and power-iteration vectors and
take the same batches (bench/torch_peer.py reproduces lipc's streams), so
after N steps (default 1) they differ only by rounding, unless one of them
computes something else. Each trains N batches (`--limit N x batch --epochs
1`) and writes a checkpoint; the script then prints, per parameter tensor, the
relative l2 distance ||x - x_ref|| / ||x_ref|| of the AdamW first moment m
(after one step, m = 0.1 g: the clipped gradient of the whole step) and of the
weights, for the cpu target and for the peer.

What to expect: after one step, tensors whose gradient meets no near tie of a
MinMax differ by float rounding (~1e-6); a tie broken differently by a few
rounding errors reroutes part of the gradient (~1e-4 for every tensor before
it), and the gradient clipping turns any difference of the global norm into a
common scale of the others. The differences then grow fast, on every
implementation alike: on the default model about 1e-2 after two steps and 1e-1
after ten (AdamW's first steps move each weight by about lr whatever its
gradient's size). That is why two runs of the same recipe are compared on their
results, over several seeds (bench/train_compare.sh, bench/seed_summary.py),
and not on their weights.

The reference interpreter takes about 25 s per step of the default model on
2 cores; --no-ref compares the cpu target and the peer only. Needs build/lipc
(or $LIPC_BUILD/lipc) and Debian's python3-torch and python3-numpy.
"""
import argparse
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_peer import read_safetensors, train_recipe  # noqa: E402


def run(cmd, log):
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc:
        with open(log) as f:
            tail = f.read()[-2000:]
        sys.exit(f"step_compare: {' '.join(cmd)} failed (exit {rc}):\n{tail}")


def rel(x, ref):
    d = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / d) if d > 0 else float(np.linalg.norm(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--model", default="models/liresnet-fmnist.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="bench/out/step_compare")
    ap.add_argument("--no-ref", action="store_true", help="skip the reference interpreter")
    args = ap.parse_args()
    if args.steps < 1:
        sys.exit("step_compare: --steps must be at least 1")
    lipc = os.path.join(os.environ.get("LIPC_BUILD", "build"), "lipc")
    if not os.access(lipc, os.X_OK):
        sys.exit(f"step_compare: {lipc} not built (cmake --build build)")
    os.makedirs(args.out, exist_ok=True)

    sets = [a for kv in args.set for a in ("--set", kv)]
    batch = train_recipe(args.model)["batch"]
    limit = str(args.steps * batch)
    seed = [] if args.seed is None else ["--seed", str(args.seed)]
    common = [args.model, "--data", args.data, "--limit", limit, "--epochs", "1",
              "--threads", str(args.threads)] + sets + seed
    ck = {t: os.path.join(args.out, t + ".safetensors") for t in ("cpu", "ref", "peer")}
    targets = ["cpu"] if args.no_ref else ["cpu", "ref"]
    for t in targets:
        print(f"step_compare: lipc train --target {t}, {args.steps} step(s) ...", file=sys.stderr)
        run([lipc, "train"] + common + ["--target", t, "--out", ck[t], "--no-report"],
            os.path.join(args.out, t + ".log"))
    print(f"step_compare: the peer, {args.steps} step(s) ...", file=sys.stderr)
    python = os.environ.get("PYTHON", sys.executable)
    run([python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peer.py"),
         "--model", args.model, "--lipc", lipc, "--data", args.data, "--limit", limit,
         "--train-epochs", "1", "--threads", str(args.threads), "--init", "lipc",
         "--test-limit", "1", "--out", ck["peer"]] + sets + seed,
        os.path.join(args.out, "peer.log"))

    base = "cpu" if args.no_ref else "ref"
    others = ["peer"] if args.no_ref else ["cpu", "peer"]
    ts = {t: read_safetensors(ck[t]) for t in [base] + others}
    names = [n for n in ts[base] if n.startswith("optimizer.m.")]
    print(f"{args.model} {' '.join(args.set)}: {args.steps} step(s) of batch {batch}; relative "
          f"l2 distance to lipc --target {base}\n")
    head = ["parameter"] + [f"{o}: {w}" for o in others for w in ("m", "weights")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n in sorted(names):
        p = n[len("optimizer.m."):]
        cells = [p]
        for o in others:
            for key in (n, p):
                if key not in ts[o]:
                    sys.exit(f"step_compare: {ck[o]} lacks {key}")
                cells.append("%.2e" % rel(ts[o][key].numpy().ravel(),
                                          ts[base][key].numpy().ravel()))
        print("| " + " | ".join(cells) + " |")
    print(f"\n(checkpoints and logs: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
