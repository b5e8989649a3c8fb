#!/usr/bin/env bash
# bench/train_compare.sh: a whole training run of lipc against the same run of
# the PyTorch peer (bench/torch_peer.py --train-epochs): the same network,
# recipe, initial weights, batches, epochs, seed, validation split and threads,
# one after the other (never at once), then both certified on the test split.
# Prints a markdown table (kept as OUT/train_compare.md, beside the JSON and
# the stderr of every run).
#
#   bench/train_compare.sh [--epochs E] [--threads T] [--seed S] [--val N]
#       [--val-every E] [--limit N] [--test-limit N] [--set K=V]... [--model FILE]
#       [--data DIR] [--eps LIST] [--channels-last] [--no-cross] [--control] [--out DIR]
#
# Defaults: 3 epochs, 2 threads, seed 1, 5000 held-out training examples
# validated at the end, all 55000 others, all 10000 test images,
# models/liresnet-fmnist.yaml, /usr/share/datasets/fashion-mnist, radii
# 0.1,0.141,0.3,0.5,1.0, the peer in NCHW (its faster training layout on 2
# threads, docs/benchmarks.md; --channels-last for NHWC), OUT = bench/out.
# --limit, --test-limit and --set make a quick check of the script itself.
#
# Steps: lipc train; lipc certify with the sound K_sub (lipc's certificate)
# and with the power-iteration estimate (what the peer certifies with); the
# peer's training and certification; unless --no-cross, lipc certify (sound)
# on the peer's checkpoint, so both networks also meet the same certifier;
# with --control, lipc trained and certified again with --portable (the same
# recipe, seed, start and batches; other vector widths, so other rounding):
# what rounding alone moves, the noise floor of the comparison
# (bench/seed_summary.py reads it).
#
# Needs build/lipc (or $LIPC_BUILD/lipc) and Debian's python3-torch and
# python3-numpy under /usr/bin/python3 (or $PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

epochs=3 threads=2 seed=1 val=5000 val_every="" limit="" test_limit=""
model=models/liresnet-fmnist.yaml data=/usr/share/datasets/fashion-mnist
eps=0.1,0.141,0.3,0.5,1.0 layout="" cross=1 control=0 out=bench/out
sets=()
usage() { # usage STATUS: on stdout for --help, else on stderr
  { echo usage:; sed -n '9,11p' "$0" | cut -c3-; } >&$(( $1 ? 2 : 1 ))
  exit "$1"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --val) val=$2; shift 2 ;;
    --val-every) val_every=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --test-limit) test_limit=$2; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    --model) model=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --eps) eps=$2; shift 2 ;;
    --channels-last) layout=--channels-last; shift ;;
    --no-cross) cross=0; shift ;;
    --control) control=1; shift ;;
    --out) out=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "train_compare.sh: unknown option '$1'" >&2; usage 2 ;;
  esac
done

lipc=${LIPC_BUILD:-build}/lipc
python=${PYTHON:-/usr/bin/python3}
[ -x "$lipc" ] || { echo "train_compare.sh: $lipc not built (cmake --build build)" >&2; exit 3; }
"$python" -c 'import torch, numpy' 2>/dev/null ||
  { echo "train_compare.sh: $python lacks torch or numpy (scripts/install-deps.sh --bench)" >&2
    exit 3; }
mkdir -p "$out"
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}

# the options both trainings and all certifications share
common=(--data "$data" "${sets[@]}")
train_opts=(--epochs "$epochs" --val "$val" --seed "$seed" --threads "$threads")
peer_opts=(--train-epochs "$epochs" --val "$val" --seed "$seed" --threads "$threads")
cert_opts=(--eps "$eps" --threads "$threads")
if [ -n "$val_every" ]; then
  train_opts+=(--val-every "$val_every"); peer_opts+=(--val-every "$val_every")
fi
if [ -n "$limit" ]; then train_opts+=(--limit "$limit"); peer_opts+=(--limit "$limit"); fi
if [ -n "$test_limit" ]; then
  cert_opts+=(--limit "$test_limit"); peer_opts+=(--test-limit "$test_limit")
fi

now() { date +%s.%N; }
cmds="$out/train_compare.commands"
: > "$cmds"
step() { # step NAME JSON-OUT COMMAND...: runs it, stdout to JSON-OUT, stderr to NAME.log
  local name=$1 json=$2
  shift 2
  echo "$*" >> "$cmds"
  echo "train_compare: $name ..." >&2
  local t0 rc=0
  t0=$(now)
  "$@" > "$json" 2> "$out/$name.log" || rc=$?
  awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f\n", b - a }' > "$out/$name.wall"
  if [ $rc -ne 0 ]; then
    echo "train_compare: $name failed (exit $rc); the end of $out/$name.log:" >&2
    tail -n 20 "$out/$name.log" >&2
    exit 1
  fi
}

step lipc-train "$out/lipc-train.json" "$lipc" train "$model" "${common[@]}" "${train_opts[@]}" \
  --out "$out/lipc.safetensors" --no-report --json
step lipc-certify "$out/lipc-certify.json" "$lipc" certify "$model" "${common[@]}" \
  "${cert_opts[@]}" --weights "$out/lipc.safetensors" --json
step lipc-certify-estimate "$out/lipc-certify-estimate.json" "$lipc" certify "$model" \
  "${common[@]}" "${cert_opts[@]}" --weights "$out/lipc.safetensors" --bound estimate --json
if [ $control = 1 ]; then
  step lipc-portable-train "$out/lipc-portable-train.json" "$lipc" train "$model" "${common[@]}" \
    "${train_opts[@]}" --portable --out "$out/lipc-portable.safetensors" --no-report --json
  step lipc-portable-certify "$out/lipc-portable-certify.json" "$lipc" certify "$model" \
    "${common[@]}" "${cert_opts[@]}" --weights "$out/lipc-portable.safetensors" --json
  step lipc-portable-certify-estimate "$out/lipc-portable-certify-estimate.json" "$lipc" \
    certify "$model" "${common[@]}" "${cert_opts[@]}" --weights "$out/lipc-portable.safetensors" \
    --bound estimate --json
fi
step peer "$out/peer.json" "$python" bench/torch_peer.py --model "$model" --lipc "$lipc" \
  "${common[@]}" "${peer_opts[@]}" --cert-eps "$eps" $layout --out "$out/peer.safetensors" --json
if [ $cross = 1 ]; then
  step peer-lipc-certify "$out/peer-lipc-certify.json" "$lipc" certify "$model" "${common[@]}" \
    "${cert_opts[@]}" --weights "$out/peer.safetensors" --json
fi

"$python" - "$out" "$eps" "$cross" "$control" <<'EOF' | tee "$out/train_compare.md"
import json, os, sys

out, eps, cross, control = (sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "1",
                            sys.argv[4] == "1")


def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def wall(name):
    with open(os.path.join(out, name + ".wall")) as f:
        return float(f.read())


def key(e):
    # certify --json's key: the shortest %g that reads back as the radius
    v = float(e)
    for prec in range(6, 18):
        k = "%.*g" % (prec, v)
        if float(k) == v:
            return k
    return repr(v)


lt, lc, le, p = (load("lipc-train.json"), load("lipc-certify.json"),
                 load("lipc-certify-estimate.json"), load("peer.json"))
pc = load("peer-lipc-certify.json") if cross else None
keys = [key(e) for e in eps]
pct = lambda x: "%.2f %%" % (100 * x)

print(f"{p['model']} {' '.join(p['set'])}: {p['epochs']} epochs of batch {p['batch']} "
      f"({p['steps']} steps, {p['n_train']} training examples, {p['n_val']} held out), seed "
      f"{p['seed']}, {p['threads']} threads; test set {p['test_n']} images\n")
head = ["", "clean"] + [f"VRA {e}" for e in eps] + ["K_sub", "final train loss", "train s",
                                                     "images/s"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))


def row(name, cert, k, loss, secs, rate):
    cells = [name, pct(cert["clean_acc"])] + [pct(cert["vra"][k_]) for k_ in keys]
    cells += [k, loss, secs, rate]
    print("| " + " | ".join(cells) + " |")


lrate = "%.1f" % lt["images_per_s"]
row("lipc, sound K_sub", lc, "%.4f" % lc["k_sub"], "%.4f" % lt["loss"], "%.1f" % lt["seconds"],
    lrate)
row("lipc, estimated K_sub", le, "%.4f" % le["k_sub"], "", "", "")
row("PyTorch peer, estimated K_sub", p, "%.4f" % p["k_sub"], "%.4f" % p["loss"],
    "%.1f" % p["train_s"], "%.1f" % p["train_img_s"])
if cross:
    row("peer's weights, lipc certify (sound)", pc, "%.4f" % pc["k_sub"], "", "", "")
if control:
    ct, cc, ce = (load("lipc-portable-train.json"), load("lipc-portable-certify.json"),
                  load("lipc-portable-certify-estimate.json"))
    row("control: lipc --portable, sound K_sub", cc, "%.4f" % cc["k_sub"], "%.4f" % ct["loss"],
        "%.1f" % ct["seconds"], "%.1f" % ct["images_per_s"])
    row("control: lipc --portable, estimated K_sub", ce, "%.4f" % ce["k_sub"], "", "", "")

print()
if "val_acc" in lt and "val_acc" in p:
    print(f"Validation ({p['n_val']} held-out images, VRA at eps {lt['eps']:.6g}): lipc "
          f"{pct(lt['val_acc'])} / {pct(lt['val_vra'])}, peer {pct(p['val_acc'])} / "
          f"{pct(p['val_vra'])}.")
print(f"Training time is each one's training loop: batches, steps, validation and a "
      f"checkpoint per epoch (peer: validation {p['val_s']:.1f} s, checkpoints "
      f"{p['save_s']:.1f} s); data loading and compilation are outside. Whole commands: "
      f"lipc train {wall('lipc-train'):.1f} s, lipc certify {wall('lipc-certify'):.1f} s "
      f"(sound) and {wall('lipc-certify-estimate'):.1f} s (estimate); the peer "
      f"{wall('peer'):.1f} s, its certification {p['certify_s']:.1f} s of that.\n")

# the requirement: lipc's own certificates (sound K_sub) at least the peer's,
# in less training time
checks = [("clean accuracy", lc["clean_acc"], p["clean_acc"])]
checks += [(f"VRA at {e}", lc["vra"][k_], p["vra"][k_]) for e, k_ in zip(eps, keys)]
ok = True
print("lipc (sound) against the peer:")
for what, a, b in checks:
    good = a >= b
    ok &= good
    print(f"- {what}: {pct(a)} vs {pct(b)} ({100 * (a - b):+.2f} points) "
          f"{'ok' if good else 'BEHIND'}")
faster = lt["seconds"] < p["train_s"]
ok &= faster
print(f"- training time: {lt['seconds']:.1f} s vs {p['train_s']:.1f} s "
      f"({p['train_s'] / lt['seconds']:.2f}x) {'ok' if faster else 'BEHIND'}")
print("\nverdict: " + ("lipc matches or beats the peer" if ok
                       else "lipc does not match the peer everywhere"))
EOF
echo
echo "(table: $out/train_compare.md; commands: $cmds)"
