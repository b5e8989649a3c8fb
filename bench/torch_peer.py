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


def train_section_value(model, key, default):
    """`key: value` from the model file's `train:` section (a flat mapping of
    numbers; the JSON dump does not carry it). Plain text scan, no YAML module."""
    section = False
    with open(model) as f:
        for line in f:
            text = line.split("#", 1)[0].rstrip()
            if not text:
                continue
            if not text[0].isspace():
                section = text.startswith("train:")
                continue
            m = re.match(r"\s+(\w+)\s*:\s*(\S+)$", text)
            if section and m and m.group(1) == key:
                return type(default)(float(m.group(2)))
    return default


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


def read_idx_images(path, n):
    with gzip.open(path, "rb") as f:
        magic, count, h, w = struct.unpack(">IIII", f.read(16))
        n = min(n, count)
        a = np.frombuffer(f.read(n * h * w), dtype=np.uint8).reshape(n, 1, h, w)
    return torch.from_numpy(a.astype(np.float32) / 255.0)


def read_idx_labels(path, n):
    with gzip.open(path, "rb") as f:
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


# ---- main ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description="PyTorch peer of a lipc model: training and "
                                 "inference+certification throughput (bench/README.md)")
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
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--clip", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weights", help="a lipc safetensors checkpoint (default: random init)")
    ap.add_argument("--only", choices=["train", "infer"], help="time one of the two")
    ap.add_argument("--check", action="store_true", help="self-check against lipc, no timing")
    ap.add_argument("--check-n", type=int, default=1000, help="test images for --check")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                    help="Fashion-MNIST IDX files for --check")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()

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
    torch.manual_seed(args.seed)
    if args.batch is None:
        args.batch = train_section_value(args.model, "batch", 128)
    if args.power_iters is None:
        args.power_iters = train_section_value(args.model, "power_iters", 10)
    if args.eps is None:
        args.eps = train_section_value(args.model, "eps", 36.0 / 255.0)

    if args.dump:
        with open(args.dump) as f:
            desc = json.load(f)
    else:
        desc = lipc_dump(args.lipc, args.model, args.set)
    peer = Peer(desc, args.residual)
    peer.init_params(args.seed)
    if args.weights:
        peer.load(read_safetensors(args.weights))
    # parameters, folded identities and power-iteration vectors, initialised on
    # the host as on the CPU, then moved once (no-op on the CPU)
    peer.to(args.dev)

    if args.check:
        sys.exit(0 if check(peer, args) else 1)

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
