#!/usr/bin/python3
"""bench/torch_peer.py: the PyTorch peer of a lipc model, for speed comparisons.

It builds the SAME network as lipc from `lipc dump MODEL --format=json` (the
graph after every pass: residual blocks already folded into one convolution
with the identity on its centre tap) and times, on random data:

  train   one certified-training step as lipc runs it (METHOD.md section 5/6):
          `power_iters` warm-started power iterations per operator-norm layer,
          forward, K_sub = product of the per-layer estimates sigma = ||A v||
          (gradient u v^T, v held constant), head pair bounds
          K_ji = K_sub ||r_j - r_i||, the adaptive EMMA loss, backward,
          gradient clipping, AdamW;
  infer   forward without gradients plus the certification arithmetic
          (f_j - f_i > eps K_ji for every i != j, j the prediction), with K_sub
          computed once beforehand.

It reports the median images/s over the timed steps, the model's FLOPs per
image, the achieved GFLOP/s and the peak RSS. `--check` tests that the peer
computes what lipc computes (see check()).

`--train-epochs E` instead runs what `lipc train` runs (train_main()): the
model's `train:` recipe (schedules, loss, clipping, optimiser) on the IDX
training split, from lipc's own initial weights and power-iteration vectors
and with lipc's batch order, crops and flips, all reproduced bit for bit from
lipc's random streams; checkpoints in lipc's format after every epoch and
validation as lipc validates; then it certifies the test split with a
converged power-iteration K_sub. What is timed is what lipc's training time
covers.

`--device cuda` runs the same on the current NVIDIA GPU: the model, its
power-iteration vectors, the optimiser state and the batch (drawn on the host,
copied once) live there; the clock is read after torch.cuda.synchronize();
TF32 is allowed in training unless `--tf32 off` and never in infer+cert or
--check; the peak GPU memory is reported too. `--threads` applies to the CPU only.

OPENBLAS_CORETYPE=SkylakeX is set below before torch is imported, unless the
environment already sets it: Debian's OpenBLAS does not recognise the CPUs of
the development machines and otherwise falls back to a slow SSE kernel
(docs/benchmarks.md). PyTorch's dense layers go through that BLAS, which
keeps its own thread pool (torch.set_num_threads does not size it): with
--threads T, OPENBLAS_NUM_THREADS=T is set the same way, so the peer uses T
threads and no more.

Requires Debian's python3-torch and python3-numpy (scripts/install-deps.sh
--bench). Usage: bench/README.md.
"""
import os
import sys

os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
for _i, _a in enumerate(sys.argv):
    _t = _a[len("--threads="):] if _a.startswith("--threads=") else (
        sys.argv[_i + 1] if _a == "--threads" and _i + 1 < len(sys.argv) else "")
    if _t.isdigit() and int(_t) > 0:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", _t)

import argparse
import gzip
import json
import math
import re
import resource
import statistics
import struct
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the model description -------------------------------------------------

def lipc_dump(lipc, model, sets):
    cmd = [lipc, "dump", model, "--format=json"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    return json.loads(out)


def read_safetensors(path):
    """name -> float64 tensor, from a safetensors file: an 8-byte little-endian
    header length, a JSON header {name: {dtype, shape, data_offsets}}, the data."""
    dtypes = {"F32": np.float32, "F64": np.float64, "F16": np.float16}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] not in dtypes:
            sys.exit(f"torch_peer: {path}: tensor {name} has dtype {t['dtype']}, not supported")
        lo, hi = t["data_offsets"]
        a = np.frombuffer(blob[base + lo:base + hi], dtype=dtypes[t["dtype"]])
        out[name] = torch.from_numpy(a.astype(np.float64).reshape(t["shape"]))
    return out


def write_safetensors(path, tensors, meta):
    """The safetensors layout read_safetensors reads: float32 tensors (name ->
    numpy array) and string metadata, the header padded to 8 bytes. Written to
    PATH.tmp and renamed, as lipc writes its checkpoints."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {k: str(v) for k, v in meta.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


# ---- the train: section -------------------------------------------------------

# docs/model-spec.md section 12: every key and its default
TRAIN_DEFAULTS = {
    "epochs": 10, "batch": 128, "loss": "emma", "eps": 36.0 / 255.0, "eps_start": 0.1,
    "eps_end": 1.5, "eps_ramp": 0.5, "optimizer": "adamw", "lr": 0.001,
    "weight_decay": 0.0001, "momentum": 0.9, "warmup_epochs": 1.0, "clip": 3.0,
    "power_iters": 10, "crop": False, "crop_pad": 4, "flip": False, "trades_lambda": 1.0,
    "scaled_residuals": False, "seed": 1,
}


def train_recipe(model):
    """The model file's `train:` section over the defaults, plus `given`: the
    keys the file sets. A flat mapping of plain values, read as text (the
    JSON dump does not carry it; no YAML module); an expression over `params`
    is not evaluated and stops the peer."""
    rec, given, section = dict(TRAIN_DEFAULTS), set(), False
    with open(model) as f:
        for line in f:
            text = line.split("#", 1)[0].rstrip()
            if not text:
                continue
            if not text[0].isspace():
                section = text.startswith("train:")
                continue
            m = re.match(r"\s+(\w+)\s*:\s*(.+)$", text)
            if not section or not m or m.group(1) not in TRAIN_DEFAULTS:
                continue
            key, raw = m.group(1), m.group(2).strip()
            kind = type(TRAIN_DEFAULTS[key])
            try:
                if kind is bool:
                    if raw not in ("true", "false"):
                        raise ValueError(raw)
                    val = raw == "true"
                elif kind is str:
                    if not re.fullmatch(r"\w+", raw):
                        raise ValueError(raw)
                    val = raw
                else:
                    val = kind(float(raw))
            except ValueError:
                sys.exit(f"torch_peer: {model}: train.{key} = '{raw}': only plain values are "
                         "read here (not expressions)")
            rec[key] = val
            given.add(key)
    if rec["scaled_residuals"]:
        sys.exit(f"torch_peer: {model}: train.scaled_residuals (kernels trained as "
                 "V = s (a * U)) is not implemented in the peer")
    rec["given"] = given
    return rec


# ---- lipc's random streams --------------------------------------------------------
#
# Bit for bit the generators of support/support.c (xoshiro256** seeded by
# splitmix64, Box-Muller normals), runtime/init.c (one stream per parameter
# name), the cpu target's first power-iteration vectors and runtime/augment.c
# (one stream per (seed, epoch, position)): the peer starts from lipc's
# initial weights and sees lipc's batches, in lipc's order, with lipc's crops
# and flips.

M64 = (1 << 64) - 1
GOLDEN = 0x9e3779b97f4a7c15


def mix64(z):
    """splitmix64's finaliser."""
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M64
    return z ^ (z >> 31)


class LipcRng:
    """lipc_rng: xoshiro256**, its state expanded from the seed by splitmix64."""

    def __init__(self, seed):
        x, self.s = seed & M64, []
        for _ in range(4):
            x = (x + GOLDEN) & M64
            self.s.append(mix64(x))

    def next(self):
        s0, s1, s2, s3 = self.s
        r = (s1 * 5) & M64
        r = ((((r << 7) | (r >> 57)) & M64) * 9) & M64
        t = (s1 << 17) & M64
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = ((s3 << 45) | (s3 >> 19)) & M64
        self.s = [s0, s1, s2, s3]
        return r

    def below(self, k):
        """rand_below: the top 32 bits scaled by k (k <= 2^31)."""
        return ((self.next() >> 32) * k) >> 32

    def normals(self, n):
        """n draws of lipc_rng_normal: sqrt(-2 log(1 - u1)) cos(2 pi u2), u the
        top 53 bits over 2^53; the generator written out (this runs for every
        weight)."""
        s0, s1, s2, s3 = self.s
        out = [0.0] * n
        log, cos, sqrt, scale, tau = math.log, math.cos, math.sqrt, 2.0 ** -53, 2.0 * math.pi
        for j in range(n):
            uv = []
            for _ in range(2):
                r = (s1 * 5) & M64
                r = ((((r << 7) | (r >> 57)) & M64) * 9) & M64
                t = (s1 << 17) & M64
                s2 ^= s0
                s3 ^= s1
                s1 ^= s2
                s0 ^= s3
                s2 ^= t
                s3 = ((s3 << 45) | (s3 >> 19)) & M64
                uv.append((r >> 11) * scale)
            out[j] = sqrt(-2.0 * log(1.0 - uv[0])) * cos(tau * uv[1])
        self.s = [s0, s1, s2, s3]
        return out

    def shuffle(self, n):
        """The batcher's Fisher-Yates permutation of range(n)."""
        order = list(range(n))
        s0, s1, s2, s3 = self.s
        for i in range(n - 1, 0, -1):
            r = (s1 * 5) & M64
            r = ((((r << 7) | (r >> 57)) & M64) * 9) & M64
            t = (s1 << 17) & M64
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & M64
            j = ((r >> 32) * (i + 1)) >> 32
            order[i], order[j] = order[j], order[i]
        self.s = [s0, s1, s2, s3]
        return order


def stream_seed(seed, epoch, pos):
    """runtime/augment.c: the seed of the stream of (seed, epoch, position)."""
    h = mix64((seed + GOLDEN) & M64)
    h = mix64(h ^ (((epoch & M64) * 0xd1b54a32d192ed03 + 1) & M64))
    return mix64(h ^ (((pos & M64) * 0xaef17502108ef2d9 + 2) & M64))


def np_u64(c):
    return np.uint64(c & M64)


def np_mix64(z):
    z = (z ^ (z >> np_u64(30))) * np_u64(0xbf58476d1ce4e5b9)
    z = (z ^ (z >> np_u64(27))) * np_u64(0x94d049bb133111eb)
    return z ^ (z >> np_u64(31))


def np_crops(seed, epoch, n_pos, crop, pad, flip):
    """dy, dx and flip of positions 0..n_pos-1 of an epoch, as lipc_batcher_next
    draws them: each position's own stream, dy and dx first (crop), then the
    flip from the top bit; vectorised over the positions (uint64 wraps)."""
    with np.errstate(over="ignore"):
        h = np_mix64(np_u64(seed + GOLDEN))
        h = np_mix64(h ^ np_u64((epoch & M64) * 0xd1b54a32d192ed03 + 1))
        pos = np.arange(n_pos, dtype=np.uint64)
        x = np_mix64(h ^ (pos * np_u64(0xaef17502108ef2d9) + np_u64(2)))
        s = []
        for _ in range(4):
            x = x + np_u64(GOLDEN)
            s.append(np_mix64(x))

        def draw():
            r = s[1] * np_u64(5)
            r = ((r << np_u64(7)) | (r >> np_u64(57))) * np_u64(9)
            t = s[1] << np_u64(17)
            s[2] ^= s[0]
            s[3] ^= s[1]
            s[1] ^= s[2]
            s[0] ^= s[3]
            s[2] ^= t
            s[3] = (s[3] << np_u64(45)) | (s[3] >> np_u64(19))
            return r

        zero = np.zeros(n_pos, dtype=np.int64)
        dy, dx, fl = zero, zero, np.zeros(n_pos, dtype=bool)
        if crop:
            k = np_u64(2 * pad + 1)
            dy = (((draw() >> np_u64(32)) * k) >> np_u64(32)).astype(np.int64)
            dx = (((draw() >> np_u64(32)) * k) >> np_u64(32)).astype(np.int64)
        if flip:
            fl = (draw() >> np_u64(63)).astype(bool)
    return dy, dx, fl


def fnv1a(name):
    h = 1469598103934665603
    for b in name.encode():
        h = ((h ^ b) * 1099511628211) & M64
    return h


def orthonormalise(v, rng):
    """runtime/init.c's modified Gram-Schmidt, twice, over the rows of v
    (float64, rows <= columns), a collapsed row redrawn from rng. The same
    steps, but numpy's dot sums in another order: equal to lipc's to rounding,
    not bit for bit."""
    for k in range(v.shape[0]):
        for tries in range(101):
            before = float(v[k] @ v[k])
            for _ in range(2):
                for m in range(k):
                    v[k] -= float(v[m] @ v[k]) * v[m]
            nrm = float(v[k] @ v[k])
            if nrm > 1e-20 * before and nrm > 0.0:
                v[k] *= 1.0 / math.sqrt(nrm)
                break
            v[k] = rng.normals(v.shape[1])


def lipc_init_param(info, seed, blocks):
    """lipc_init_param (runtime/init.c) for one parameter, as float32."""
    rng = LipcRng(seed ^ ((fnv1a(info["name"]) * GOLDEN) & M64))
    shape, numel = info["shape"], info["numel"]
    rows = shape[0] if len(shape) >= 2 else 1
    fan_in = numel // rows
    fan_out = numel // shape[1] if len(shape) >= 2 else numel
    init = info["init"]
    if init == "default":
        init = "zeros" if info["role"] == "bias" else "kaiming"
    if init == "zeros":
        return np.zeros(shape, dtype=np.float32)
    if init == "xavier":
        std = math.sqrt(2.0 / (fan_in + fan_out))
    elif init == "liresnet":
        std = 1.0 / fan_in
        if blocks > 1:
            std /= math.sqrt(blocks)
    elif init == "orthogonal":
        std = 1.0
    else:
        std = math.sqrt(2.0 / fan_in)
    v = np.array(rng.normals(numel), dtype=np.float64) * std
    if init == "orthogonal":
        if rows <= fan_in:
            m = v.reshape(rows, fan_in)
            orthonormalise(m, rng)
        else:
            m = np.ascontiguousarray(v.reshape(rows, fan_in).T)
            orthonormalise(m, rng)
            v = m.T.copy()
    return v.reshape(shape).astype(np.float32)


# ---- the network ------------------------------------------------------------

def centre_identity(shape, dtype):
    """I_c[o, i, kh/2, kw/2] = (o == i): x + conv_W(x) = conv_{W + I_c}(x)."""
    c_out, c_in, kh, kw = shape
    eye = torch.zeros(shape, dtype=dtype)
    eye[:, :, kh // 2, kw // 2] = torch.eye(c_out, c_in, dtype=dtype)
    return eye


class Peer(torch.nn.Module):
    """The graph of the JSON dump, executed node by node with torch ops. Each
    op's semantics are those of ir/ops/<op>.c."""

    def __init__(self, desc, residual="fold"):
        super().__init__()
        self.desc = desc
        self.nodes = desc["nodes"]
        self.residual = residual
        self.names = [p["name"] for p in desc["params"]]
        self.pinfo = {p["name"]: p for p in desc["params"]}
        self.params = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(p["shape"])) for p in desc["params"]])
        self.index = {n: i for i, n in enumerate(self.names)}
        self.byid = {n["id"]: n for n in self.nodes}
        self.output = desc["output"]
        self.head = self.byid[self.output]
        if self.head["op"] != "dense":
            sys.exit("torch_peer: the output node must be a dense head")
        # operator-norm factors of K_sub: every opnorm node but the head
        self.factors = []
        self.const = 1.0
        for n in self.nodes:
            kind = n["lipschitz"]["kind"]
            if n["id"] == self.output or kind in ("none", "one", "head"):
                continue
            if kind == "opnorm":
                self.factors.append(n)
            elif kind == "const":
                self.const *= n["lipschitz"]["value"]
            else:
                sys.exit(f"torch_peer: node {n['name']}: Lipschitz kind '{kind}' "
                         "(a kept nonlinear residual) is not supported")
        self.eyes = {}
        for n in self.nodes:
            if n["attrs"].get("fold_identity"):
                shape = self.pinfo[n["params"][0]]["shape"]
                self.register_buffer("eye%d" % n["id"], centre_identity(shape, torch.float32))
                self.eyes[n["id"]] = "eye%d" % n["id"]
        # warm-started power-iteration vectors, one per factor, shaped as its input
        for f in self.factors:
            shape = self.byid[f["inputs"][0]]["shape"]
            self.register_buffer("v%d" % f["id"], torch.randn([1] + shape))

    def p(self, name):
        return self.params[self.index[name]]

    def vec(self, f):
        return getattr(self, "v%d" % f["id"])

    def init_params(self, seed):
        """lipc's init rules (runtime/init.c), not its random stream."""
        g = torch.Generator().manual_seed(seed)
        blocks = max(1, len(self.desc.get("residuals", [])))
        with torch.no_grad():
            for name, prm in zip(self.names, self.params):
                info = self.pinfo[name]
                init = info["init"]
                if init == "default":
                    init = "zeros" if info["role"] == "bias" else "kaiming"
                shape = info["shape"]
                fan_in = info["numel"] // shape[0] if len(shape) >= 2 else info["numel"]
                fan_out = info["numel"] // shape[1] if len(shape) >= 2 else info["numel"]
                if init == "zeros":
                    prm.zero_()
                    continue
                x = torch.randn(shape, generator=g, dtype=torch.float64)
                if init == "liresnet":
                    x /= fan_in * math.sqrt(blocks)
                elif init == "xavier":
                    x *= math.sqrt(2.0 / (fan_in + fan_out))
                elif init == "orthogonal":
                    torch.nn.init.orthogonal_(x.view(shape[0], -1))
                else:
                    x *= math.sqrt(2.0 / fan_in)
                prm.copy_(x)

    def load(self, tensors):
        missing = [n for n in self.names if n not in tensors]
        if missing:
            sys.exit(f"torch_peer: the checkpoint lacks {', '.join(missing[:4])}")
        with torch.no_grad():
            for name, prm in zip(self.names, self.params):
                if list(tensors[name].shape) != list(prm.shape):
                    sys.exit(f"torch_peer: {name}: checkpoint shape {list(tensors[name].shape)}"
                             f", model {list(prm.shape)}")
                prm.copy_(tensors[name])
            for f in self.factors:
                key = "power_iteration.%s.v" % f["name"]
                if key in tensors and tensors[key].norm() > 0:
                    self.vec(f).copy_(tensors[key].view_as(self.vec(f)))

    def to_channels_last(self):
        with torch.no_grad():
            for prm in self.params:
                if prm.dim() == 4:
                    prm.data = prm.data.contiguous(memory_format=torch.channels_last)
            for n in self.eyes.values():
                setattr(self, n, getattr(self, n).contiguous(memory_format=torch.channels_last))

    # -- the linear maps, shared by the forward and the power iteration

    def weight(self, n):
        """The weight the node computes with: W + I (folded residual) and/or
        rows scaled to unit norm (the GloRo head; a zero row stays zero)."""
        w = self.p(n["params"][0])
        a = n["attrs"]
        if a.get("normalize"):
            norm = w.norm(dim=1, keepdim=True)
            w = w / torch.where(norm > 0, norm, torch.ones_like(norm))
        if a.get("fold_identity") and self.residual == "fold":
            if n["op"] == "conv2d":
                w = w + getattr(self, self.eyes[n["id"]])
            else:
                w = w + torch.eye(w.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
        return w

    @staticmethod
    def conv_pads(n):
        top, bottom, left, right = n["attrs"]["pad"]
        return top, bottom, left, right

    def linear(self, n, x, w):
        """The map without bias: conv2d (cross-correlation, zero padding
        [top, bottom, left, right]) or dense."""
        a = n["attrs"]
        if n["op"] == "dense":
            y = F.linear(x, w)
        else:
            top, bottom, left, right = self.conv_pads(n)
            if top == bottom and left == right:
                y = F.conv2d(x, w, stride=a["stride"], padding=(top, left))
            else:
                y = F.conv2d(F.pad(x, (left, right, top, bottom)), w, stride=a["stride"])
        if a.get("fold_identity") and self.residual == "add":
            y = y + x  # the block as written: x + conv_W(x)
        return y

    def adjoint(self, n, u, w, in_shape):
        """A^T u, the exact adjoint of linear(): a transposed convolution with
        the same stride, cropped to the unpadded input."""
        if n["op"] == "dense":
            x = F.linear(u, w.t())
        else:
            top, bottom, left, right = self.conv_pads(n)
            x = F.conv_transpose2d(u, w, stride=n["attrs"]["stride"])
            h, wd = in_shape[1], in_shape[2]
            # rows past the padded input are never read by the forward: output
            # of a full transposed conv has (h_out-1)*s + k rows <= padded rows
            x = F.pad(x, (0, left + wd + right - x.shape[3], 0, top + h + bottom - x.shape[2]))
            x = x[:, :, top:top + h, left:left + wd]
        if n["attrs"].get("fold_identity") and self.residual == "add":
            x = x + u
        return x

    # -- forward

    def forward(self, x):
        vals = {}
        ws = {}
        for n in self.nodes:
            op, a = n["op"], n["attrs"]
            ins = [vals[i] for i in n["inputs"]]
            if op == "input":
                y = x
            elif op == "shift":
                y = ins[0] + a["by"]
            elif op == "pad":
                top, bottom, left, right = a["pad"]
                y = F.pad(ins[0], (left, right, top, bottom))
            elif op in ("conv2d", "dense"):
                w = ws[n["id"]] = self.weight(n)
                y = self.linear(n, ins[0], w)
                if a.get("bias"):
                    b = self.p(n["params"][1])
                    y = y + (b.view(1, -1, 1, 1) if op == "conv2d" else b)
            elif op == "minmax":
                c = ins[0].shape[1]
                if a["pairing"] == "halves":
                    lo, hi = ins[0][:, :c // 2], ins[0][:, c // 2:]
                    y = torch.cat([torch.maximum(lo, hi), torch.minimum(lo, hi)], 1)
                else:
                    pr = ins[0].unflatten(1, (c // 2, 2))
                    y = torch.stack([pr.amax(2), pr.amin(2)], 2).flatten(1, 2)
            elif op == "flatten":
                y = ins[0].flatten(1)  # (c, h, w) order, whatever the memory format
            elif op == "relu":
                y = F.relu(ins[0])
            elif op == "add":
                y = ins[0] + ins[1]
            elif op == "avgpool":
                y = F.avg_pool2d(ins[0], a["kernel"], a["stride"])
            else:
                sys.exit(f"torch_peer: op '{op}' is not supported")
            vals[n["id"]] = y
        self.last_weights = ws
        return vals[self.output]

    # -- Lipschitz bound

    def power_iterate(self, iters, weights=None):
        """v <- A^T A v / ||A^T A v||, warm-started; no gradient."""
        with torch.no_grad():
            for f in self.factors:
                w = weights[f["id"]] if weights else self.weight(f)
                shape = self.byid[f["inputs"][0]]["shape"]
                v = self.vec(f)
                if f["op"] == "dense":
                    v = v.view(1, -1)
                for _ in range(iters):
                    z = self.adjoint(f, self.linear(f, v, w), w, shape)
                    s = z.norm()
                    if v.is_cuda:
                        # the same rule (a zero z leaves v as it was) without
                        # waiting on the GPU for s in every iteration
                        v = torch.where(s > 0, z / s, v)
                        continue
                    if s == 0:
                        break
                    v = z / s
                self.vec(f).copy_(v.view_as(self.vec(f)))

    def k_sub(self, weights=None):
        """K_sub = prod sigma_f, sigma_f = ||A_f v_f|| with v_f held constant:
        its gradient w.r.t. the weight is u v^T, u = A v / ||A v|| (as lipc)."""
        k = torch.tensor(self.const, dtype=self.params[0].dtype, device=self.params[0].device)
        sig = []
        for f in self.factors:
            w = weights[f["id"]] if weights else self.weight(f)
            v = self.vec(f)
            if f["op"] == "dense":
                v = v.view(1, -1)
            s = self.linear(f, v, w).norm()
            sig.append(s)
            k = k * s
        return k, sig

    def head_rows(self, weights=None):
        return weights[self.output] if weights else self.weight(self.head)

    def init_lipc(self, seed):
        """lipc's own initial state, bit for bit: every parameter from its
        stream (runtime/init.c), and each power-iteration vector as the cpu
        target draws it when it finds it zero (the first step of a run):
        normals from the stream 0x9e3779b97f4a7c15 ^ (b + 1), b the factor's
        index among the program's bound factors (opnorm and constant layers
        in graph order)."""
        blocks = len(self.desc.get("residuals", []))
        with torch.no_grad():
            for name, prm in zip(self.names, self.params):
                prm.copy_(torch.from_numpy(lipc_init_param(self.pinfo[name], seed, blocks)))
            b = 0
            for n in self.nodes:
                kind = n["lipschitz"]["kind"]
                if n["id"] == self.output or kind in ("none", "one", "head"):
                    continue
                if kind == "opnorm":
                    v = self.vec(n)
                    rng = LipcRng(GOLDEN ^ (b + 1))
                    v.copy_(torch.tensor(rng.normals(v.numel()), dtype=torch.float64)
                            .float().view_as(v))
                b += 1

    def head_rows64(self):
        """The head's rows in double, normalised as weight() does: the pair
        bounds of the loss, as lipc computes them (from the float weights)."""
        w = self.p(self.head["params"][0]).double()
        if self.head["attrs"].get("normalize"):
            norm = w.norm(dim=1, keepdim=True)
            w = w / torch.where(norm > 0, norm, torch.ones_like(norm))
        return w

    def k_sub64(self, weights):
        """K_sub in double from the float products A v: lipc's norm2f (float
        vectors, double sums). Same gradient u v^T as k_sub()."""
        k = torch.tensor(self.const, dtype=torch.float64, device=self.params[0].device)
        for f in self.factors:
            v = self.vec(f)
            if f["op"] == "dense":
                v = v.view(1, -1)
            k = k * self.linear(f, v, weights[f["id"]]).double().norm()
        return k

    def converge(self, max_iters, tol):
        """K_sub by power iteration to convergence, from a copy of the
        training vectors (they are not changed), as lipc's `lipschitz` entry
        does: per layer, chunks of 10 iterations until sigma moves less than
        tol (relative) or max_iters are done. In double throughout (lipc:
        float vectors, double norms). Returns (K_sub, iterations per layer)."""
        k, iters = self.const, []
        with torch.no_grad():
            for f in self.factors:
                w = self.weight(f).double()
                shape = self.byid[f["inputs"][0]]["shape"]
                v = self.vec(f).double().clone()
                if f["op"] == "dense":
                    v = v.view(1, -1)
                sigma, change, done = 0.0, 1.0, 0
                while done < max_iters and change > tol:
                    chunk = min(10, max_iters - done)
                    before = sigma
                    nv = v.norm()
                    if nv > 0:
                        v = v / nv
                    for _ in range(chunk):
                        z = self.adjoint(f, self.linear(f, v, w), w, shape)
                        s = z.norm()
                        if s == 0:
                            break
                        v = z / s
                    sigma = float(self.linear(f, v, w).norm())
                    done += chunk
                    change = abs(sigma - before) / sigma if sigma > 0 else 0.0
                k *= sigma
                iters.append(done)
        return k, iters


def pair_dist(r):
    """||r_a - r_b|| for all pairs; the diagonal is 0 with a zero gradient."""
    eye = torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
    sq = ((r[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return torch.sqrt(sq + eye) - eye


def emma_loss(f, y, kpair, eps):
    """backend/ref/loss.c: K_i = kpair[y, i];
    e_i = clip((f_y - f_i) / max(eps K_i, 1e-8), 0.01, 1) (stop-gradient);
    z_i = f_i + e_i eps K_i (i != y), z_y = f_y; loss = mean CE(z, y)."""
    ky = kpair[y]
    fy = f.gather(1, y[:, None])
    e = ((fy - f) / (eps * ky).clamp(min=1e-8)).clamp(0.01, 1.0).detach()
    other = 1.0 - F.one_hot(y, f.shape[1]).to(f.dtype)
    z = f + other * e * eps * ky
    return F.cross_entropy(z, y)


def certify(f, kpair, eps):
    """Prediction j = argmax (ties never certified); certified iff
    f_j - f_i > eps K_ji for every i != j. Returns (pred, certified, radius)."""
    top2 = f.topk(2, dim=1)
    j = top2.indices[:, 0]
    tie = top2.values[:, 0] == top2.values[:, 1]
    margin = top2.values[:, :1] - f
    kj = kpair[j]
    ratio = torch.where(kj > 0, margin / torch.where(kj > 0, kj, torch.ones_like(kj)),
                        torch.where(margin > 0, torch.full_like(margin, math.inf),
                                    torch.full_like(margin, -math.inf)))
    ratio.scatter_(1, j[:, None], math.inf)
    radius = ratio.amin(1)
    radius = torch.where(tie, torch.zeros_like(radius), radius)
    return j, (radius > eps) & ~tie, radius


# ---- FLOPs ----------------------------------------------------------------------

def layer_flops(n, byid):
    """2 * multiply-adds of one conv2d or dense node, per image."""
    if n["op"] == "conv2d":
        c_in = byid[n["inputs"][0]]["shape"][0]
        c_out, h, w = n["shape"]
        kh, kw = n["attrs"]["kernel"]
        return 2 * c_out * h * w * c_in * kh * kw
    if n["op"] == "dense":
        return 2 * n["shape"][0] * byid[n["inputs"][0]]["shape"][0]
    return 0


def flops(peer, batch, power_iters):
    fwd = sum(layer_flops(n, peer.byid) for n in peer.nodes)
    fac = sum(layer_flops(f, peer.byid) for f in peer.factors)
    # per step: power_iters x (A and A^T) on one vector, then sigma = ||A v||
    # forward and backward (~3 applications)
    power = fac * (2 * power_iters + 3)
    return {"forward": fwd, "train": 3 * fwd + power / batch, "power_per_step": power,
            "infer": fwd}


# ---- timing -------------------------------------------------------------------------

def set_tf32(dev, on):
    """On a GPU: whether convolutions and matrix products in float32 may use
    TF32 (10-bit mantissa inputs, float32 accumulation). No effect on the CPU."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def clock(dev):
    """Seconds, read once the device has finished the work queued so far
    (GPU kernels run asynchronously to the Python that launches them)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def synthetic(peer, batch, seed, channels_last):
    g = torch.Generator().manual_seed(seed)
    shape = [batch] + peer.desc["input"]["shape"]
    lo, hi = peer.desc["input"]["range"]
    x = lo + (hi - lo) * torch.rand(shape, generator=g)
    if channels_last and len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, peer.head["shape"][0], (batch,), generator=g)
    return x, y


def bench_train(peer, x, y, args):
    # built after the parameters moved, so its state sits on their device
    opt = torch.optim.AdamW(peer.params, lr=args.lr, weight_decay=args.weight_decay)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        t0 = clock(args.dev)
        opt.zero_grad(set_to_none=True)
        peer.power_iterate(args.power_iters)
        f = peer(x)
        k, _ = peer.k_sub(peer.last_weights)
        kpair = k * pair_dist(peer.head_rows(peer.last_weights))
        loss = emma_loss(f, y, kpair, args.eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.params, args.clip)
        opt.step()
        dt = clock(args.dev) - t0
        if step >= args.warmup:
            times.append(dt)
        losses.append(float(loss))
    return times, losses


def bench_infer(peer, x, args):
    times = []
    with torch.no_grad():
        peer.power_iterate(args.cert_iters)  # once, not timed
        k, _ = peer.k_sub()
        kpair = k * pair_dist(peer.head_rows())
        for step in range(args.warmup + args.steps):
            t0 = clock(args.dev)
            f = peer(x)
            _, cert, _ = certify(f, kpair, args.eps)
            int(cert.sum())
            dt = clock(args.dev) - t0
            if step >= args.warmup:
                times.append(dt)
    return times, float(k)


# ---- self-check -------------------------------------------------------------------

def report(ok, what, detail):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}: {detail}")
    return ok


def open_idx(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_idx_u8(path, n):
    """The first n images of an IDX file (gzip or not), uint8 [n, 1, h, w]."""
    with open_idx(path) as f:
        magic, count, h, w = struct.unpack(">IIII", f.read(16))
        n = min(n, count)
        a = np.frombuffer(f.read(n * h * w), dtype=np.uint8).reshape(n, 1, h, w)
    return torch.from_numpy(a.copy())


def read_idx_images(path, n):
    return to_float(read_idx_u8(path, n))


def read_idx_labels(path, n):
    with open_idx(path) as f:
        magic, count = struct.unpack(">II", f.read(8))
        n = min(n, count)
        return torch.from_numpy(np.frombuffer(f.read(n), dtype=np.uint8).astype(np.int64))


def check(peer, args):
    """Without a checkpoint: parameter count, the folded convolution against
    conv + identity, the adjoint identity <A x, y> = <x, A^T y> of every factor,
    and NHWC against NCHW. With --weights (a lipc checkpoint): per-layer power
    iteration estimates and K_sub against `lipc bound`; on the first --check-n
    Fashion-MNIST test images, each prediction against `lipc predict` and the
    correct and certified counts and mean radius against
    `lipc certify --bound estimate`. Runs in float64, as lipc's reference,
    on the peer's device (test data drawn on the host and copied there)."""
    ok = True
    dev = args.dev
    set_tf32(dev, False)
    peer.double()
    print("torch_peer check:")
    want = sum(p["numel"] for p in peer.desc["params"])
    got = sum(p.numel() for p in peer.params)
    ok &= report(got == want, "parameter count", f"torch {got}, lipc {want}")

    g = torch.Generator().manual_seed(7)
    worst_fold = 0.0
    for n in peer.nodes:
        if not n["attrs"].get("fold_identity"):
            continue
        x = torch.randn([2] + peer.byid[n["inputs"][0]]["shape"], generator=g,
                        dtype=torch.float64).to(dev)
        w = peer.p(n["params"][0])
        peer.residual = "fold"
        folded = peer.linear(n, x, peer.weight(n))
        peer.residual = "add"
        added = peer.linear(n, x, peer.weight(n))
        peer.residual = args.residual
        unfolded = (F.conv2d(x, w, padding=n["attrs"]["pad"][0]) if n["op"] == "conv2d"
                    else F.linear(x, w)) + x
        worst_fold = max(worst_fold, float((folded - unfolded).abs().max()),
                         float((added - unfolded).abs().max()))
    ok &= report(worst_fold < 1e-10, "conv(x; W + I_c) == conv(x; W) + x",
                 f"max |diff| {worst_fold:.2e}")

    worst_adj = 0.0
    for f in peer.factors:
        shape = peer.byid[f["inputs"][0]]["shape"]
        w = peer.weight(f)
        xs = [1] + shape if f["op"] == "conv2d" else [1, shape[0]]
        x = torch.randn(xs, generator=g, dtype=torch.float64).to(dev)
        ax = peer.linear(f, x, w)
        yv = torch.randn(ax.shape, generator=g, dtype=torch.float64).to(dev)
        aty = peer.adjoint(f, yv, w, shape)
        lhs, rhs = float((ax * yv).sum()), float((x * aty).sum())
        worst_adj = max(worst_adj, abs(lhs - rhs) / max(abs(lhs), 1e-30))
    ok &= report(worst_adj < 1e-10, "<A x, y> == <x, A^T y> for every factor",
                 f"max rel diff {worst_adj:.2e}")

    x, _ = synthetic(peer, 4, 3, False)
    x = x.double().to(dev)
    with torch.no_grad():
        ref = peer(x)
        xl = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        peer.to_channels_last()
        nhwc = peer(xl)
    ok &= report(float((ref - nhwc).abs().max()) < 1e-9, "channels-last forward == NCHW",
                 f"max |diff| {float((ref - nhwc).abs().max()):.2e}")

    if args.weights:
        ok &= check_against_lipc(peer, args)
    else:
        print("  (no --weights: comparison with lipc's own numbers skipped)")
    print("torch_peer check:", "passed" if ok else "FAILED")
    return ok


def check_against_lipc(peer, args):
    ok = True
    common = []
    for s in args.set:
        common += ["--set", s]
    bound = json.loads(subprocess.run(
        [args.lipc, "bound", args.model, "--weights", args.weights, "--json"] + common,
        check=True, stdout=subprocess.PIPE).stdout)
    # lipc iterates to a relative change of 1e-7 from the checkpoint's vectors;
    # go further here, in chunks of 10, so both sit within ~1e-7 of sigma_max
    with torch.no_grad():
        k, sig = peer.k_sub()
        for _ in range(1000):
            peer.power_iterate(10)
            k2, sig = peer.k_sub()
            done = abs(float(k2) - float(k)) <= 1e-11 * float(k2)
            k = k2
            if done:
                break
    worst = 0.0
    for f, s in zip(peer.factors, sig):
        est = next(l["estimate"] for l in bound["layers"] if l["name"] == f["name"])
        worst = max(worst, abs(float(s) - est) / est)
    ok &= report(worst < 1e-4, "per-layer sigma vs lipc bound", f"max rel diff {worst:.2e} "
                 f"over {len(sig)} layers")
    ok &= report(abs(float(k) - bound["k_sub"]) / bound["k_sub"] < 1e-4, "K_sub",
                 f"torch {float(k):.8g}, lipc {bound['k_sub']:.8g}")

    if peer.desc["input"]["shape"] != [1, 28, 28]:
        print("  (not a 28x28 model: accuracy comparison on Fashion-MNIST skipped)")
        return ok
    eps_list = [0.01, 0.02, 0.05, 0.141]
    cert = json.loads(subprocess.run(
        [args.lipc, "certify", args.model, "--weights", args.weights, "--bound", "estimate",
         "--eps", ",".join(str(e) for e in eps_list), "--limit", str(args.check_n), "--json"]
        + common, check=True, stdout=subprocess.PIPE).stdout)
    cert_k, cert = cert["k_sub"], cert["details"]
    xs = read_idx_images(os.path.join(args.data, "t10k-images-idx3-ubyte.gz"), args.check_n)
    ys = read_idx_labels(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"), args.check_n)
    xs, ys = xs.to(args.dev), ys.to(args.dev)
    # lipc's own K_sub here, so this compares the logits and the head rows
    kpair = cert_k * pair_dist(peer.head_rows().detach())
    with torch.no_grad():
        f = peer(xs.double())
    pred, _, radius = certify(f, kpair, 0.0)
    right = pred == ys
    ok &= report(int(right.sum()) == cert["correct"], "correct predictions",
                 f"torch {int(right.sum())}, lipc {cert['correct']} of {len(ys)}")
    lines = subprocess.run(
        [args.lipc, "predict", args.model, "--weights", args.weights, "--target", "ref",
         "--limit", str(args.check_n)] + common,
        check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().split("\n")
    theirs = torch.tensor([int(l.split()[1]) for l in lines if l.strip()], device=args.dev)
    same = int((theirs == pred).sum()) if len(theirs) == len(pred) else -1
    ok &= report(same == len(pred), "per-image predictions vs lipc predict",
                 f"{same} of {len(pred)} agree")
    mine = [int((right & (radius > e)).sum()) for e in eps_list]
    ok &= report(mine == cert["vra_count"], f"certified at eps {eps_list}",
                 f"torch {mine}, lipc {cert['vra_count']}")
    fin = radius[right & torch.isfinite(radius)]
    mean = float(fin.mean()) if len(fin) else 0.0
    want = cert["mean_finite_radius_correct"]
    ok &= report(abs(mean - want) <= 1e-6 * max(abs(want), 1e-12) + 1e-12,
                 "mean certified radius of correct points", f"torch {mean:.10g}, lipc {want:.10g}")
    return ok


# ---- training a whole run, as `lipc train` ---------------------------------------

def idx_file(data, split, images):
    """runtime/dataset.c's idx_find: the IDX file of a split, gzip or not."""
    prefixes = ["train"] if split == "train" else ["t10k", "test"]
    kinds = (["images-idx3-ubyte", "images.idx3-ubyte"] if images
             else ["labels-idx1-ubyte", "labels.idx1-ubyte"])
    for p in prefixes:
        for k in kinds:
            for suffix in (".gz", ""):
                path = os.path.join(data, f"{p}-{k}{suffix}")
                if os.path.isfile(path):
                    return path
    sys.exit(f"torch_peer: no {split} {'images' if images else 'labels'} (IDX) in {data}")


def load_split(data, split, limit):
    """The first `limit` examples (all when 0) of an IDX split: images as uint8
    [n, 1, h, w] and labels as int64."""
    n = limit if limit else 1 << 62
    return (read_idx_u8(idx_file(data, split, True), n),
            read_idx_labels(idx_file(data, split, False), n))


def to_float(u8):
    """uint8 pixels to [0, 1] as lipc reads them: v * (1.0f / 255.0f) in float."""
    return u8.float() * (torch.tensor(1.0, dtype=torch.float32) / 255.0)


def augment_spec(data, rec, no_augment):
    """lipc_augment_defaults for the dataset, then the model's keys (cli/run.c).
    An IDX directory is Fashion-MNIST when its path mentions "fashion"
    (runtime/dataset.c), else digits."""
    name = "fashion-mnist" if re.search("fashion|Fashion|FASHION", data) else "mnist"
    crop, pad, flip = True, 2, name == "fashion-mnist"
    if "crop" in rec["given"]:
        crop = rec["crop"]
    if "crop_pad" in rec["given"]:
        pad = rec["crop_pad"]
    if "flip" in rec["given"]:
        flip = rec["flip"]
    if no_augment:
        crop = flip = False
    return name, crop, pad if crop else 0, flip


def schedule_lr(rec, lr, t, total, per_epoch):
    """runtime/train.c: linear warm-up over warmup_epochs, then cosine to 0."""
    warm = rec["warmup_epochs"] * float(per_epoch)
    if warm >= 1.0 and t < warm:
        return lr * float(t + 1) / warm
    span = float(total) - (warm if warm >= 1.0 else 0.0)
    pos = float(t) - (warm if warm >= 1.0 else 0.0)
    if span <= 0.0:
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * pos / span))


def schedule_eps(rec, eps, t, total):
    """runtime/train.c: eps (s + (e - s) min(t / (ramp T), 1))."""
    ramp = rec["eps_ramp"] * float(total)
    frac = min(float(t) / ramp, 1.0) if ramp > 0.0 else 1.0
    return eps * (rec["eps_start"] + (rec["eps_end"] - rec["eps_start"]) * frac)


def train_loss(kind, f, y, kpair, eps, lam):
    """backend/ref/loss.c, batch mean, in double: emma, margin (e = 1), gloro
    (CE over [f, f_bot], f_bot = max_{i != j} f_i + eps K_ji, j = argmax f) and
    trades (CE(f) + lambda (logsumexp([f, f_bot]) - logsumexp(f)))."""
    if kind in ("emma", "margin"):
        ky = kpair[y]
        if kind == "emma":
            fy = f.gather(1, y[:, None])
            e = ((fy - f) / (eps * ky).clamp(min=1e-8)).clamp(0.01, 1.0).detach()
        else:
            e = torch.ones_like(f)
        other = 1.0 - F.one_hot(y, f.shape[1]).to(f.dtype)
        return F.cross_entropy(f + other * e * eps * ky, y)
    j = f.detach().argmax(1)  # the lowest index among equals, as lipc
    push = (f + eps * kpair[j]).masked_fill(F.one_hot(j, f.shape[1]).bool(), -math.inf)
    u = torch.cat([f, push.max(1).values[:, None]], 1)
    if kind == "gloro":
        return F.cross_entropy(u, y)
    return F.cross_entropy(f, y) + lam * (torch.logsumexp(u, 1) - torch.logsumexp(f, 1)).mean()


def count_certified(f, y, kpair, eps):
    """(correct, correct and certified at eps): strict rule, ties neither."""
    pred, cert, _ = certify(f, kpair, eps)
    right = (pred == y) & ~tied(f)
    return int(right.sum()), int((right & cert).sum())


def tied(f):
    top2 = f.topk(2, dim=1).values
    return top2[:, 0] == top2[:, 1]


class Batches:
    """lipc's batcher (runtime/augment.c) over uint8 images: each epoch's
    permutation and every position's crop and flip from lipc's streams,
    computed before the clock starts (microseconds in lipc's C, seconds in
    Python); the gather, the crop and the flip run in the timed loop, on the
    zero-padded images (zero: black, outside the network's shift)."""

    def __init__(self, x8, y, batch, seed, crop, pad, flip, epochs, dev, channels_last):
        self.n, self.batch = x8.shape[0], batch
        self.steps = self.n // batch  # the last partial batch is dropped
        self.h, self.w = x8.shape[2], x8.shape[3]
        self.pad, self.aug = pad, crop or flip
        self.x = F.pad(x8, (pad, pad, pad, pad)).to(dev) if self.aug else x8.to(dev)
        self.y = y.to(dev)
        self.dev, self.channels_last = dev, channels_last
        self.tables = []
        for e in range(epochs):
            order = torch.tensor(LipcRng(stream_seed(seed, e, -1)).shuffle(self.n))
            dy, dx, fl = np_crops(seed, e, self.steps * batch, crop, pad, flip)
            self.tables.append((order.to(dev), torch.from_numpy(dy).to(dev),
                                torch.from_numpy(dx).to(dev), torch.from_numpy(fl).to(dev)))
        self.ar_h = torch.arange(self.h, device=dev)
        self.ar_w = torch.arange(self.w, device=dev)

    def get(self, epoch, step):
        order, dy, dx, fl = self.tables[epoch]
        lo, hi = step * self.batch, (step + 1) * self.batch
        idx = order[lo:hi]
        if self.aug:
            # out[c][y][x] = padded[c][y + dy][x' + dx], x' = flip ? w - 1 - x : x
            rows = dy[lo:hi, None] + self.ar_h
            cols = dx[lo:hi, None] + torch.where(fl[lo:hi, None], self.w - 1 - self.ar_w,
                                                 self.ar_w)
            ch = torch.arange(self.x.shape[1], device=self.dev)
            xb = self.x[idx[:, None, None, None], ch[None, :, None, None],
                        rows[:, None, :, None], cols[:, None, None, :]]
        else:
            xb = self.x[idx]
        xb = to_float(xb)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, self.y[idx]


def certify_set(peer, x8, y, k, eps_list, batch, dev, channels_last):
    """Clean accuracy and VRA at each eps over a dataset: float logits, then
    lipc's rule in double with pair bounds k ||r_j - r_i||. Returns
    (n correct, [n certified per eps])."""
    with torch.no_grad():
        kpair = k * pair_dist(peer.head_rows64())
        correct, cert = 0, [0] * len(eps_list)
        for lo in range(0, x8.shape[0], batch):
            xb = to_float(x8[lo:lo + batch].to(dev))
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            f = peer(xb).double()
            yb = y[lo:lo + batch].to(dev)
            _, _, radius = certify(f, kpair, 0.0)
            right = (f.argmax(1) == yb) & ~tied(f)
            correct += int(right.sum())
            for i, e in enumerate(eps_list):
                cert[i] += int((right & (radius > e)).sum())
    return correct, cert


def save_checkpoint(path, peer, opt, rec, meta):
    """A lipc checkpoint (runtime/checkpoint.c's names), so lipc can certify,
    bound or resume the peer's network: the parameters, the optimiser's
    moments (optimizer.m. / optimizer.v.) and the power-iteration vectors."""
    t = {}
    with torch.no_grad():
        for name, prm in zip(peer.names, peer.params):
            t[name] = prm.detach().cpu().contiguous().numpy()
            st = opt.state.get(prm, {})
            m = st.get("exp_avg", st.get("momentum_buffer"))
            if m is not None:
                t["optimizer.m." + name] = m.detach().cpu().contiguous().numpy()
            if "exp_avg_sq" in st:
                t["optimizer.v." + name] = st["exp_avg_sq"].detach().cpu().contiguous().numpy()
        for f in peer.factors:
            t[f"power_iteration.{f['name']}.v"] = peer.vec(f).detach().cpu().reshape(-1).numpy()
    write_safetensors(path, t, dict(meta, format="lipc-checkpoint-1", model=peer.desc["name"]))


def eps_key(e):
    """certify --json's key for a radius: the shortest %g that reads back."""
    for prec in range(6, 18):
        key = "%.*g" % (prec, e)
        if float(key) == e:
            return key
    return repr(e)


def train_main(peer, desc, rec, args):
    """`lipc train` with the peer: the recipe of rec (the model's train:
    section, the options over it), lipc's data order, crops and flips, its
    schedules, loss, clipping and optimiser; then certification of the test
    split. Prints a summary (or --json) and returns the exit status."""
    dev, cl = args.dev, args.channels_last
    t_load = time.perf_counter()
    x8, y = load_split(args.data, "train", args.limit)
    if list(x8.shape[1:]) != desc["input"]["shape"]:
        sys.exit(f"torch_peer: {args.data} has {list(x8.shape[1:])} images, the model takes "
                 f"{desc['input']['shape']}")
    if args.val >= x8.shape[0]:
        sys.exit(f"torch_peer: --val {args.val} leaves no training data ({x8.shape[0]} examples)")
    n_tr = x8.shape[0] - args.val
    xv8, yv = x8[n_tr:], y[n_tr:]
    x8, y = x8[:n_tr], y[:n_tr]
    epochs, batch = args.train_epochs, rec["batch"]
    dname, crop, pad, flip = augment_spec(args.data, rec, args.no_augment)
    if cl:
        peer.to_channels_last()
    data = Batches(x8, y, batch, rec["seed"], crop, pad, flip, epochs, dev, cl)
    if data.steps == 0:
        sys.exit(f"torch_peer: the training set has {n_tr} examples, fewer than one batch "
                 f"of {batch}")
    per_epoch, total = data.steps, data.steps * epochs
    if rec["optimizer"] == "adamw":
        opt = torch.optim.AdamW(peer.params, lr=rec["lr"], betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=rec["weight_decay"])
    else:
        opt = torch.optim.SGD(peer.params, lr=rec["lr"], momentum=rec["momentum"],
                              nesterov=True, weight_decay=rec["weight_decay"])
    load_s = time.perf_counter() - t_load
    label = " ".join([desc["name"]] + args.set)
    print(f"torch_peer train: {label} on {dname} ({n_tr} examples"
          f"{', held-out validation ' + str(args.val) if args.val else ''}), {epochs} epochs of "
          f"batch {batch}, {rec['loss']} loss at eps {rec['eps']:g}, {torch.get_num_threads()} "
          f"threads, init {args.init}, crop {pad if crop else 'off'}, flip "
          f"{'on' if flip else 'off'} (data and tables {load_s:.1f} s)", file=sys.stderr)

    res = {"model": desc["name"], "set": args.set, "mode": "train", "device": str(dev),
           "threads": None if dev.type == "cuda" else torch.get_num_threads(),
           "torch": torch.__version__, "layout": "nhwc" if cl else "nchw",
           "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
           "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "params": sum(p["numel"] for p in desc["params"]), "init": args.init,
           "epochs": epochs, "batch": batch, "steps": total, "n_train": n_tr, "n_val": args.val,
           "seed": rec["seed"], "loss_kind": rec["loss"], "eps": rec["eps"],
           "augment": {"crop": crop, "crop_pad": pad, "flip": flip}, "load_s": load_s}
    val_s = save_s = step_s = 0.0
    k_last = float("nan")
    t0 = clock(dev)
    for t in range(total):
        epoch, step = divmod(t, per_epoch)
        if step == 0:
            sum_loss, sum_n, sum_correct, sum_cert = 0.0, 0, 0, 0
        xb, yb = data.get(epoch, step)
        ts = clock(dev)
        lr = schedule_lr(rec, rec["lr"], t, total, per_epoch)
        eps = schedule_eps(rec, rec["eps"], t, total)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        peer.power_iterate(rec["power_iters"])
        f = peer(xb)
        k = peer.k_sub64(peer.last_weights)
        kpair = k * pair_dist(peer.head_rows64())
        f64 = f.double()
        loss = train_loss(rec["loss"], f64, yb, kpair, eps, rec["trades_lambda"])
        loss.backward()
        grads = [p.grad for p in peer.params if p.grad is not None]
        gnorm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        if rec["clip"] > 0 and gnorm > rec["clip"]:
            for g in grads:
                g.mul_(rec["clip"] / gnorm)
        opt.step()
        lv = float(loss)
        if not math.isfinite(lv):
            sys.exit(f"torch_peer: training diverged at step {t}: the loss is {lv}")
        with torch.no_grad():
            c, ce = count_certified(f64.detach(), yb, kpair.detach(), eps)
        step_s += clock(dev) - ts
        k_last = float(k)
        sum_loss += lv * len(yb)
        sum_n += len(yb)
        sum_correct += c
        sum_cert += ce
        if (t + 1) % per_epoch:
            continue
        # the end of an epoch: the log line, validation when due, the checkpoint
        res.update(loss=sum_loss / sum_n, train_acc=sum_correct / sum_n,
                   train_cert=sum_cert / sum_n, k_sub_train=k_last)
        line = (f"torch_peer train: epoch {epoch + 1}/{epochs}: loss {res['loss']:.4f} acc "
                f"{res['train_acc']:.4f} cert {res['train_cert']:.4f} K_sub {k_last:.4g} "
                f"eps {eps:.4g} lr {lr:.3g}")
        if args.val and ((args.val_every and (epoch + 1) % args.val_every == 0) or t + 1 == total):
            tv = clock(dev)
            kv, _ = peer.converge(1000, 1e-6)
            c, ce = certify_set(peer, xv8, yv, kv, [rec["eps"]], batch, dev, cl)
            res.update(val_acc=c / args.val, val_vra=ce[0] / args.val, val_k_sub=kv)
            val_s += clock(dev) - tv
            line += f" val_acc {res['val_acc']:.4f} val_vra {res['val_vra']:.4f}"
        if args.out:
            tc = clock(dev)
            save_checkpoint(args.out, peer, opt, rec,
                            {"seed": rec["seed"], "epoch": epoch + 1, "eps": repr(rec["eps"]),
                             "epochs": epochs, "batch": batch, "step": t + 1})
            save_s += clock(dev) - tc
        print(line + f" ({clock(dev) - t0:.1f} s)", file=sys.stderr)
    train_s = clock(dev) - t0
    res.update(train_s=train_s, train_img_s=total * batch / train_s, val_s=val_s, save_s=save_s,
               step_s=step_s, checkpoint=args.out)

    # certification of the test split (not in train_s), never in TF32
    set_tf32(dev, False)
    tc = clock(dev)
    xt8, yt = load_split(args.data, "test", args.test_limit)
    k, iters = peer.converge(2000, 1e-7)
    eps_list = [float(e) for e in args.cert_eps.split(",")]
    c, ce = certify_set(peer, xt8, yt, k, eps_list, 256, dev, cl)
    n = xt8.shape[0]
    res.update(test_n=n, k_sub=k, k_sub_iters=iters, clean_acc=c / n,
               vra={eps_key(e): v / n for e, v in zip(eps_list, ce)},
               certify_s=clock(dev) - tc,
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{label}: {epochs} epochs, {total} steps of {batch} in "
          f"{train_s:.1f} s ({res['train_img_s']:.1f} images/s; validation {val_s:.1f} s, "
          f"checkpoints {save_s:.1f} s), {res['threads']} threads, {res['layout']}")
    print(f"  final train loss {res['loss']:.4f}, train accuracy {res['train_acc']:.4f}, "
          f"certified at the training radius {res['train_cert']:.4f}")
    if args.val:
        print(f"  validation: accuracy {res['val_acc']:.4f}, VRA at eps {rec['eps']:g} "
              f"{res['val_vra']:.4f} (K_sub {res['val_k_sub']:.4g})")
    print(f"  test ({n} points): K_sub {k:.6g} (power-iteration estimate), clean accuracy "
          f"{res['clean_acc']:.4f}")
    for e in eps_list:
        print(f"  VRA at eps {e:<6g} {res['vra'][eps_key(e)]:.4f}")
    print(f"  (certification {res['certify_s']:.1f} s, peak RSS {res['peak_rss_mib']:.0f} MiB)")
    return 0


# ---- main ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="PyTorch peer of a lipc model: training and "
                                 "inference+certification throughput, or (--train-epochs) "
                                 "a whole training run and certification (bench/README.md)")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "liresnet-fmnist.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="override a model parameter (passed to lipc dump)")
    ap.add_argument("--lipc", default=os.path.join(ROOT, "build", "lipc"))
    ap.add_argument("--dump", metavar="FILE",
                    help="read the model from this `lipc dump --format=json` output "
                         "instead of running lipc (--model and --set are then ignored)")
    ap.add_argument("--batch", type=int, default=None, help="default: the model's train batch")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where the model, its state and the batch live (cuda: the current GPU)")
    ap.add_argument("--tf32", choices=["on", "off"], default="on",
                    help="cuda: TF32 in the training step (infer+cert and --check never use it)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (cpu only; ignored with --device cuda)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    ap.add_argument("--residual", choices=["fold", "add"], default="fold",
                    help="fold: one conv with W + I_c (default); add: conv_W(x) + x")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--power-iters", type=int, default=None,
                    help="per training step (default: the model's train.power_iters)")
    ap.add_argument("--cert-iters", type=int, default=500,
                    help="power iterations before certifying (not timed)")
    ap.add_argument("--eps", type=float, default=None, help="default: the model's train.eps")
    ap.add_argument("--lr", type=float, default=None, help="default: the model's train.lr")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="default: the model's train.weight_decay")
    ap.add_argument("--clip", type=float, default=None, help="default: the model's train.clip")
    ap.add_argument("--seed", type=int, default=None, help="default: the model's train.seed")
    ap.add_argument("--weights", help="a lipc safetensors checkpoint (default: random init)")
    ap.add_argument("--init", choices=["lipc", "torch"], default=None,
                    help="random init: lipc's own values bit for bit (default with "
                         "--train-epochs) or lipc's rules with torch's generator (default "
                         "otherwise: fast for large models)")
    ap.add_argument("--only", choices=["train", "infer"], help="time one of the two")
    ap.add_argument("--check", action="store_true", help="self-check against lipc, no timing")
    ap.add_argument("--check-n", type=int, default=1000, help="test images for --check")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="a directory of IDX files (Fashion-MNIST) for --check and training")
    tr = ap.add_argument_group("a training run, as lipc train (--train-epochs)")
    tr.add_argument("--train-epochs", type=int, metavar="E",
                    help="train E epochs with the model's recipe, then certify the test split")
    tr.add_argument("--limit", type=int, default=0, help="the first N training examples")
    tr.add_argument("--val", type=int, default=0, help="hold out the last N for validation")
    tr.add_argument("--val-every", type=int, default=0,
                    help="validate every E epochs (default: at the end)")
    tr.add_argument("--loss", choices=["emma", "margin", "gloro", "trades"],
                    help="default: the model's train.loss")
    tr.add_argument("--no-augment", action="store_true", help="no random crop or flip")
    tr.add_argument("--out", help="a lipc checkpoint written after every epoch")
    tr.add_argument("--test-limit", type=int, default=0, help="the first N test examples")
    tr.add_argument("--cert-eps", default="0.1,0.141,0.3,0.5,1.0",
                    help="radii to certify the test split at")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    training = args.train_epochs is not None
    if training and (args.train_epochs < 1 or args.check):
        ap.error("--train-epochs takes a count >= 1 and excludes --check")

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("torch_peer: --device cuda, but this PyTorch sees no CUDA device "
                  "(torch.cuda.is_available() is false)", file=sys.stderr)
            sys.exit(2)
        args.dev = torch.device("cuda", torch.cuda.current_device())
        gpu = torch.cuda.get_device_name(args.dev)
        where = f"{args.dev} {gpu}"
        torch.backends.cudnn.benchmark = True  # the shapes never change
    else:
        args.dev, gpu, where = torch.device("cpu"), None, "cpu"
    cuda = args.dev.type == "cuda"

    if args.threads and not cuda:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow convolutions ~170x on these CPUs
    # the model's recipe, the options over it
    rec = train_recipe(args.model)
    for key in ("batch", "power_iters", "eps", "lr", "weight_decay", "clip", "seed", "loss"):
        if getattr(args, key) is None:
            setattr(args, key, rec[key])
        rec[key] = getattr(args, key)
    torch.manual_seed(args.seed)

    if args.dump:
        with open(args.dump) as f:
            desc = json.load(f)
    else:
        desc = lipc_dump(args.lipc, args.model, args.set)
    peer = Peer(desc, args.residual)
    args.init = args.init or ("lipc" if training else "torch")
    if args.weights:
        args.init = "checkpoint"
    elif args.init == "lipc":
        peer.init_lipc(args.seed)
    else:
        peer.init_params(args.seed)
    if args.weights:
        peer.load(read_safetensors(args.weights))
    # parameters, folded identities and power-iteration vectors, initialised on
    # the host as on the CPU, then moved once (no-op on the CPU)
    peer.to(args.dev)

    if args.check:
        sys.exit(0 if check(peer, args) else 1)
    if training:
        set_tf32(args.dev, args.tf32 == "on")
        sys.exit(train_main(peer, desc, rec, args))

    if args.channels_last:
        peer.to_channels_last()
    x, y = synthetic(peer, args.batch, args.seed, args.channels_last)
    x, y = x.to(args.dev), y.to(args.dev)  # drawn on the host, copied once (keeps the layout)
    fl = flops(peer, args.batch, args.power_iters)
    res = {"model": desc["name"], "file": os.path.relpath(args.model, ROOT), "set": args.set,
           "batch": args.batch, "threads": None if cuda else torch.get_num_threads(),
           "device": where, "gpu": gpu, "tf32_train": (args.tf32 == "on") if cuda else None,
           "cuda": torch.version.cuda if cuda else None,
           "cudnn": torch.backends.cudnn.version() if cuda else None,
           "layout": "nhwc" if args.channels_last else "nchw", "residual": args.residual,
           "power_iters": args.power_iters, "eps": args.eps, "steps": args.steps,
           "warmup": args.warmup, "torch": torch.__version__,
           "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
           "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "params": sum(p["numel"] for p in desc["params"]),
           "flops_forward_per_image": fl["forward"], "flops_train_per_image": fl["train"],
           "flops_power_per_step": fl["power_per_step"]}
    if args.only != "infer":
        set_tf32(args.dev, args.tf32 == "on")
        times, losses = bench_train(peer, x, y, args)
        med = statistics.median(times)
        res.update(train_step_s=med, train_steps_s=[round(t, 4) for t in times],
                   train_img_s=args.batch / med,
                   train_gflop_s=fl["train"] * args.batch / med / 1e9,
                   train_loss_first=losses[0], train_loss_last=losses[-1])
    if args.only != "train":
        set_tf32(args.dev, False)  # the certificate's margins in full float32
        times, k = bench_infer(peer, x, args)
        med = statistics.median(times)
        res.update(infer_step_s=med, infer_steps_s=[round(t, 4) for t in times],
                   infer_img_s=args.batch / med,
                   infer_gflop_s=fl["infer"] * args.batch / med / 1e9, k_sub=k)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res["peak_gpu_mib"] = torch.cuda.max_memory_allocated(args.dev) / 2**20 if cuda else None

    if args.json:
        print(json.dumps(res))
        return
    if cuda:
        on = f"{where}, TF32 {args.tf32} in training (off in infer+cert)" + \
            (" (--threads ignored)" if args.threads else "")
    else:
        on = f"{res['threads']} threads"
    print(f"{res['model']} {' '.join(args.set)}: batch {args.batch}, {on}, "
          f"{res['layout']}, torch {res['torch']}, {res['params']} parameters")
    print(f"  FLOPs/image: forward {fl['forward'] / 1e6:.1f} M, train step "
          f"{fl['train'] / 1e6:.1f} M ({args.power_iters} power iterations)")
    if "train_img_s" in res:
        print(f"  train          {res['train_img_s']:8.1f} img/s  {res['train_gflop_s']:6.1f} GFLOP/s"
              f"  (median step {res['train_step_s'] * 1e3:.1f} ms; loss {res['train_loss_first']:.3f}"
              f" -> {res['train_loss_last']:.3f})")
    if "infer_img_s" in res:
        print(f"  infer + cert   {res['infer_img_s']:8.1f} img/s  {res['infer_gflop_s']:6.1f} GFLOP/s"
              f"  (median batch {res['infer_step_s'] * 1e3:.1f} ms; K_sub {res['k_sub']:.4g})")
    print(f"  peak RSS {res['peak_rss_mib']:.0f} MiB"
          + (f", peak GPU memory {res['peak_gpu_mib']:.0f} MiB" if cuda else ""))


if __name__ == "__main__":
    main()
