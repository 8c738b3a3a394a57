#!/usr/bin/python3
"""Eager-PyTorch baseline for `kvlab bench`, and the side-by-side table.

An independent implementation of model.md's model (RMSNorm, half-split RoPE, causal
softmax attention, SwiGLU, untied lm_head; MHA/GQA/MQA and MLA with decoupled RoPE and
query compression), trained with torch.optim.AdamW and gradient clipping as kvlab trains,
on the same two configurations as `kvlab bench` (small, large; random bytes, vocab 256).
No kvlab code is used.

Measured, per configuration and plugin, the best over thread settings: torch.set_num_threads
(its OpenMP pool, elementwise ops) in --threads and, independently, the OpenBLAS pool
(openblas_set_num_threads through ctypes; PyTorch's float32 GEMM) in --threads. The two
pools contend when both have 2 threads, and 1 torch thread + 2 OpenBLAS threads is the
fastest setting here, so all pairs are tried and every figure is printed.
  training tokens/s   median step time of N timed steps after 2 untimed ones; a step is
                      zero_grad, forward, backward, clip_grad_norm_(1.0), AdamW.step
  decode tokens/s     large configuration, batch 1, through a KV cache: a forward over 768
                      tokens fills the cache, then 256 single-token steps (context
                      768 -> 1024) are timed, 3 repeats (rewinding), median; MLA decodes
                      from its latent cache with w_uk / w_uv absorbed (as kvlab's default)
Then it runs `kvlab bench` on the same configurations in the same run (training, and
decode at context 1024 with 256 timed steps) and prints kvlab / PyTorch.

PyTorch's float32 GEMM here is the system BLAS (Debian's OpenBLAS), whose kernels follow
OPENBLAS_CORETYPE. By default PyTorch gets the same core type as kvlab picks for itself
(core/gemm.h: SkylakeX with AVX-512 F/BW/DQ/VL, Haswell with AVX2 and FMA), so both run the
same GEMM kernels: the script sets the variable and runs itself again before PyTorch loads
OpenBLAS. --openblas-coretype NAME asks for another, --openblas-coretype env leaves the
environment's.

Two settings make eager PyTorch much faster on this machine, and are on by default (the
baseline should be the best PyTorch we can get, not a strawman); --naive turns both off:
  * glibc malloc: mallopt(M_MMAP_THRESHOLD, 32 MiB) and mallopt(M_TRIM_THRESHOLD, 1 GiB),
    so freed tensors stay in the heap instead of being unmapped and faulted in again;
  * attention over chunks of the batch, so that each [chunk, H, T, T] score tensor stays
    under 16 MiB; larger blocks are above glibc's largest mmap threshold (32 MiB) and are
    mmap'd and unmapped at every allocation: the large configuration's [16, 8, 256, 256]
    scores (33.5 MB) made page faults the largest cost of a training step (~250k faults
    per step, ~3x slower).

usage: scripts/bench_pytorch.py [--kvlab build/kvlab] [--config small|large|all]
                                [--plugins mha,gqa,mqa,mla] [--threads 1,2] [--steps N]
                                [--out FILE.h5] [--skip-kvlab] [--naive]
                                [--openblas-coretype auto|env|NAME]
"""
import argparse
import ctypes
import math
import os
import statistics
import subprocess
import sys
import time


def kvlab_core_type():
    """The OpenBLAS core type kvlab picks (framework/core/gemm.cpp), from /proc/cpuinfo."""
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return ""


def choose_core_type():
    """Sets OPENBLAS_CORETYPE as --openblas-coretype asks, running this script again when the
    value changes: OpenBLAS reads it once, when PyTorch's import loads the library."""
    want = "auto"
    for i, arg in enumerate(sys.argv):
        if arg == "--openblas-coretype" and i + 1 < len(sys.argv):
            want = sys.argv[i + 1]
        elif arg.startswith("--openblas-coretype="):
            want = arg.split("=", 1)[1]
    if want == "env":
        return
    core = kvlab_core_type() if want == "auto" else want
    if core and os.environ.get("OPENBLAS_CORETYPE") != core and not os.environ.get("KVLAB_BENCH_REEXEC"):
        os.environ["OPENBLAS_CORETYPE"] = core
        os.environ["KVLAB_BENCH_REEXEC"] = "1"
        os.execv(sys.executable, [sys.executable] + sys.argv)


choose_core_type()
import h5py
import numpy as np
import torch
import torch.nn.functional as F

CONFIGS = {
    # name: d_model, n_layers, n_heads, head_dim, mlp_hidden, seq, batch, mla (kv_lora_rank, qk_rope_head_dim, q_lora_rank)
    "small": dict(D=128, L=2, H=4, dh=32, Fh=344, T=128, B=32, dc=64, dR=16, dcp=96),
    "large": dict(D=256, L=4, H=8, dh=32, Fh=683, T=256, B=16, dc=128, dR=16, dcp=192),
}
V = 256
ATTN_CHUNKING = True
THETA = 10000.0
EPS = 1e-6


# ----------------------------------------------------------------------------- the model
def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g


def rope_tables(T, d):
    j = torch.arange(d // 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * THETA ** (-2.0 * j / d)
    return torch.cos(ang).float(), torch.sin(ang).float()   # [T, d/2]


def rope(u, cos, sin):
    # u: [..., T, d] (positions along dim -2); cos, sin: [T, d/2]
    h = u.shape[-1] // 2
    u1, u2 = u[..., :h], u[..., h:]
    return torch.cat([u1 * cos - u2 * sin, u2 * cos + u1 * sin], -1)


def param(*shape):
    return torch.nn.Parameter(torch.randn(*shape) * 0.02)


def gain(n):
    return torch.nn.Parameter(torch.ones(n))


class MhaFamily(torch.nn.Module):
    def __init__(self, c, G):
        super().__init__()
        self.H, self.G, self.dh = c["H"], G, c["dh"]
        self.wq, self.wk = param(self.H * self.dh, c["D"]), param(G * self.dh, c["D"])
        self.wv, self.wo = param(G * self.dh, c["D"]), param(c["D"], self.H * self.dh)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, G, dh = self.H, self.G, self.dh
        q = rope((x @ self.wq.T).view(B, T, H, dh).transpose(1, 2), cos, sin)   # [B, H, T, dh]
        k = rope((x @ self.wk.T).view(B, T, G, dh).transpose(1, 2), cos, sin)   # [B, G, T, dh]
        v = (x @ self.wv.T).view(B, T, G, dh).transpose(1, 2)
        # head i uses kv head i // (H/G): group the query heads, broadcast the kv heads
        q = q.reshape(B, G, H // G, T, dh)
        s = (q @ k.unsqueeze(2).transpose(-1, -2)) / math.sqrt(dh)             # [B, G, H/G, T, T]
        p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
        o = (p @ v.unsqueeze(2)).reshape(B, H, T, dh).transpose(1, 2).reshape(B, T, H * dh)
        return o @ self.wo.T

    # decode: cache K, V [G, max_T, dh]
    def new_cache(self, max_T):
        return [torch.zeros(self.G, max_T, self.dh), torch.zeros(self.G, max_T, self.dh)]

    def prefill(self, x, cache, cos, sin, mask):
        T = x.shape[1]
        k = rope((x[0] @ self.wk.T).view(T, self.G, self.dh).transpose(0, 1), cos[:T], sin[:T])
        v = (x[0] @ self.wv.T).view(T, self.G, self.dh).transpose(0, 1)
        cache[0][:, :T], cache[1][:, :T] = k, v
        return self.forward(x, cos[:T], sin[:T], mask)

    def step(self, x, cache, t, cos, sin):   # x: [1, D]
        H, G, dh = self.H, self.G, self.dh
        q = rope((x @ self.wq.T).view(H, 1, dh), cos[t:t + 1], sin[t:t + 1])       # [H, 1, dh]
        cache[0][:, t] = rope((x @ self.wk.T).view(G, 1, dh), cos[t:t + 1], sin[t:t + 1])[:, 0]
        cache[1][:, t] = (x @ self.wv.T).view(G, dh)
        K, Vc = cache[0][:, :t + 1], cache[1][:, :t + 1]                           # [G, t+1, dh]
        s = (q.view(G, H // G, dh) @ K.transpose(1, 2)) / math.sqrt(dh)            # [G, H/G, t+1]
        o = torch.softmax(s, -1) @ Vc                                              # [G, H/G, dh]
        return o.reshape(1, H * dh) @ self.wo.T


class Mla(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        D, H, dh, dc, dR, dcp = c["D"], c["H"], c["dh"], c["dc"], c["dR"], c["dcp"]
        self.H, self.dh, self.dc, self.dR = H, dh, dc, dR
        self.w_dq, self.q_norm = param(dcp, D), gain(dcp)
        self.w_uq, self.w_qr = param(H * dh, dcp), param(H * dR, dcp)
        self.w_dkv, self.kv_norm = param(dc, D), gain(dc)
        self.w_uk, self.w_uv = param(H * dh, dc), param(H * dh, dc)
        self.w_kr, self.wo = param(dR, D), param(D, H * dh)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, dh, dR = self.H, self.dh, self.dR
        cq = rmsnorm(x @ self.w_dq.T, self.q_norm)
        qc = (cq @ self.w_uq.T).view(B, T, H, dh).transpose(1, 2)                 # [B, H, T, dh]
        qr = rope((cq @ self.w_qr.T).view(B, T, H, dR).transpose(1, 2), cos, sin)  # [B, H, T, dR]
        ckv = rmsnorm(x @ self.w_dkv.T, self.kv_norm)                             # [B, T, dc]
        kc = (ckv @ self.w_uk.T).view(B, T, H, dh).transpose(1, 2)
        v = (ckv @ self.w_uv.T).view(B, T, H, dh).transpose(1, 2)
        kr = rope((x @ self.w_kr.T).unsqueeze(1), cos, sin)                       # [B, 1, T, dR]
        q = torch.cat([qc, qr], -1)
        k = torch.cat([kc, kr.expand(B, H, T, dR)], -1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh + dR)
        p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
        o = (p @ v).transpose(1, 2).reshape(B, T, H * dh)
        return o @ self.wo.T

    # decode: cache c_KV [max_T, dc] and kR [max_T, dR]; w_uk absorbed into the query,
    # w_uv into the output
    def new_cache(self, max_T):
        return [torch.zeros(max_T, self.dc), torch.zeros(max_T, self.dR)]

    def prefill(self, x, cache, cos, sin, mask):
        T = x.shape[1]
        cache[0][:T] = rmsnorm(x[0] @ self.w_dkv.T, self.kv_norm)
        cache[1][:T] = rope(x[0] @ self.w_kr.T, cos[:T], sin[:T])
        return self.forward(x, cos[:T], sin[:T], mask)

    def step(self, x, cache, t, cos, sin):
        H, dh, dR, dc = self.H, self.dh, self.dR, self.dc
        cq = rmsnorm(x @ self.w_dq.T, self.q_norm)                                # [1, dcp]
        qc = (cq @ self.w_uq.T).view(H, 1, dh)
        qr = rope((cq @ self.w_qr.T).view(H, 1, dR), cos[t:t + 1], sin[t:t + 1])[:, 0]   # [H, dR]
        cache[0][t] = rmsnorm(x @ self.w_dkv.T, self.kv_norm)[0]
        cache[1][t] = rope(x @ self.w_kr.T, cos[t:t + 1], sin[t:t + 1])[0]
        C, KR = cache[0][:t + 1], cache[1][:t + 1]
        qabs = (qc @ self.w_uk.view(H, dh, dc))[:, 0]                              # [H, dc]
        s = (qabs @ C.T + qr @ KR.T) / math.sqrt(dh + dR)                          # [H, t+1]
        oabs = torch.softmax(s, -1) @ C                                            # [H, dc]
        o = (oabs.unsqueeze(1) @ self.w_uv.view(H, dh, dc).transpose(1, 2))        # [H, 1, dh]
        return o.reshape(1, H * dh) @ self.wo.T


class Model(torch.nn.Module):
    def __init__(self, c, attention):
        super().__init__()
        D, Fh = c["D"], c["Fh"]
        self.embed = param(V, D)
        self.blocks = torch.nn.ModuleList()
        for _ in range(c["L"]):
            blk = torch.nn.Module()
            blk.attn_norm, blk.mlp_norm = gain(D), gain(D)
            G = {"mha": c["H"], "gqa": 2, "mqa": 1}.get(attention)
            blk.attn = Mla(c) if attention == "mla" else MhaFamily(c, G)
            blk.w_gate, blk.w_up, blk.w_down = param(Fh, D), param(Fh, D), param(D, Fh)
            self.blocks.append(blk)
        self.final_norm = gain(D)
        self.lm_head = param(V, D)
        rd = c["dR"] if attention == "mla" else c["dh"]
        self.cos, self.sin = rope_tables(4096, rd)

    @staticmethod
    def mlp(blk, x):
        return (F.silu(x @ blk.w_gate.T) * (x @ blk.w_up.T)) @ blk.w_down.T

    def forward(self, tokens, targets=None, caches=None):
        B, T = tokens.shape
        cos, sin = self.cos[:T], self.sin[:T]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        x = self.embed[tokens]
        # Attention over chunks of the batch, so that each [chunk, H, T, T] temporary stays
        # under glibc's 32 MiB mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX): larger blocks are
        # mmap'd and unmapped at every allocation, and the page faults dominate (see --no-chunk).
        per_seq = self.blocks[0].attn.H * T * T * 4
        chunk = B if not ATTN_CHUNKING else max(1, min(B, (16 << 20) // per_seq))
        for i, blk in enumerate(self.blocks):
            xn = rmsnorm(x, blk.attn_norm)
            if caches:
                a = blk.attn.prefill(xn, caches[i], self.cos, self.sin, mask)
            elif chunk >= B:
                a = blk.attn(xn, cos, sin, mask)
            else:
                a = torch.cat([blk.attn(xn[c:c + chunk], cos, sin, mask) for c in range(0, B, chunk)])
            h = x + a
            x = h + self.mlp(blk, rmsnorm(h, blk.mlp_norm))
        logits = rmsnorm(x, self.final_norm) @ self.lm_head.T
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)

    def step(self, token, caches, t):
        x = self.embed[token].view(1, -1)
        for i, blk in enumerate(self.blocks):
            h = x + blk.attn.step(rmsnorm(x, blk.attn_norm), caches[i], t, self.cos, self.sin)
            x = h + self.mlp(blk, rmsnorm(h, blk.mlp_norm))
        return rmsnorm(x, self.final_norm) @ self.lm_head.T


# ----------------------------------------------------------------------------- measurements
def openblas_core():
    """The core type the loaded OpenBLAS runs (openblas_get_corename), or "?"."""
    try:
        f = ctypes.CDLL("libopenblas.so.0").openblas_get_corename
        f.restype = ctypes.c_char_p
        return f().decode()
    except (OSError, AttributeError):
        return "?"


def set_threads(torch_threads, blas_threads):
    torch.set_num_threads(torch_threads)
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(blas_threads)
    except (OSError, AttributeError):
        pass


def tune_malloc():
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1


def random_batch(gen, B, T):
    seq = torch.randint(0, V, (B, T + 1), generator=gen)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def make_optimizer(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95), eps=1e-8)


def train_speed(c, attention, steps):
    torch.manual_seed(0)
    model = Model(c, attention)
    opt = make_optimizer(model)
    gen = torch.Generator().manual_seed(2)
    times = []
    for s in range(2 + steps):
        x, y = random_batch(gen, c["B"], c["T"])
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s >= 2:
            times.append(time.perf_counter() - t0)
        assert math.isfinite(loss.item())
    return c["B"] * c["T"] / statistics.median(times)


@torch.no_grad()
def decode_speed(c, attention, prefill=768, steps=256, repeats=3):
    torch.manual_seed(0)
    model = Model(c, attention)
    gen = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (prefill + steps,), generator=gen)
    caches = [blk.attn.new_cache(prefill + steps) for blk in model.blocks]
    times = []
    for _ in range(repeats):
        model(tokens[None, :prefill], caches=caches)   # fills positions 0..prefill-1
        t0 = time.perf_counter()
        for t in range(prefill, prefill + steps):
            model.step(tokens[t], caches, t)
        times.append(time.perf_counter() - t0)
    return steps / statistics.median(times)


@torch.no_grad()
def check_decode(c, attention):
    """Decoding token by token reproduces the full forward's logits (this script's own check)."""
    torch.manual_seed(0)
    model = Model(c, attention)
    tokens = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(3))
    full = model(tokens[None])[0]
    caches = [blk.attn.new_cache(40) for blk in model.blocks]
    model(tokens[None, :8], caches=caches)
    err = max((model.step(tokens[t], caches, t)[0] - full[t]).abs().max().item() for t in range(8, 40))
    assert err < 1e-4, f"{attention}: decode differs from forward by {err}"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvlab", default="build/kvlab")
    ap.add_argument("--config", default="all", choices=["small", "large", "all"])
    ap.add_argument("--plugins", default="mha,gqa,mqa,mla")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="", help="kvlab bench's HDF5 output (default: a temporary file)")
    ap.add_argument("--skip-kvlab", action="store_true")
    ap.add_argument("--naive", action="store_true", help="default glibc malloc settings and unchunked attention")
    ap.add_argument("--openblas-coretype", default="auto",
                    help="PyTorch's OpenBLAS core type: auto (the one kvlab picks), env (as the environment has "
                         "it) or an OpenBLAS name")
    a = ap.parse_args()
    global ATTN_CHUNKING
    ATTN_CHUNKING = not a.naive
    tuned = not a.naive and tune_malloc()
    configs = ["small", "large"] if a.config == "all" else [a.config]
    plugins = a.plugins.split(",")
    threads = [int(t) for t in a.threads.split(",")]

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"PyTorch {torch.__version__} eager, float32 | CPU: {cpu} ({os.cpu_count()} logical CPUs) | "
          f"BLAS: {torch.__config__.show().split('BLAS_INFO=')[1].split(',')[0]} (system libblas: "
          f"{os.path.realpath('/usr/lib/x86_64-linux-gnu/libblas.so.3')}) | "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} (--openblas-coretype "
          f"{a.openblas_coretype}), OpenBLAS reports {openblas_core()}")
    print(f"PyTorch settings: malloc tuned {'yes' if tuned else 'no'}, attention in batch chunks "
          f"{'yes' if ATTN_CHUNKING else 'no'}" + (" (--naive)" if a.naive else " (see the header; --naive for neither)"))
    pairs = [(t, b) for t in threads for b in threads]
    label = lambda p: f"{p[0]}t+{p[1]}b"
    for p in plugins:
        check_decode(CONFIGS["small"], p)
    print("decode = forward check: ok for " + ", ".join(plugins))

    torch_train, torch_decode = {}, {}
    print(f"\n== PyTorch training tokens/s (median of {a.steps} steps) per thread setting "
          f"(Nt+Mb = N torch threads, M OpenBLAS threads), load average {loadavg()}")
    print(f"{'config':<6} {'attn':<5} " + " ".join(f"{label(p):>9}" for p in pairs))
    for cname in configs:
        for p in plugins:
            row = {}
            for pair in pairs:
                set_threads(*pair)
                row[pair] = train_speed(CONFIGS[cname], p, a.steps)
            torch_train[cname, p] = row
            print(f"{cname:<6} {p:<5} " + " ".join(f"{row[q]:>9.0f}" for q in pairs), flush=True)
    print(f"\n== PyTorch decode tokens/s, large, batch 1, context 768 -> 1024 (median of 3 x 256 steps), "
          f"load average {loadavg()}")
    print(f"{'attn':<5} " + " ".join(f"{label(p):>9}" for p in pairs))
    for p in plugins:
        row = {}
        for pair in pairs:
            set_threads(*pair)
            row[pair] = decode_speed(CONFIGS["large"], p)
        torch_decode[p] = row
        print(f"{p:<5} " + " ".join(f"{row[q]:>9.1f}" for q in pairs), flush=True)
    if a.skip_kvlab:
        return 0

    out = a.out or f"/tmp/kvlab_bench_pytorch_{os.getpid()}.h5"
    cmd = [a.kvlab, "bench", "--config", a.config, "--plugins", a.plugins, "--threads", a.threads,
           "--steps", str(a.steps), "--parts", "gemm,train,decode", "--decode-contexts", "1024",
           "--decode-steps", "256", "--decode-repeats", "3", "--out", out]
    print(f"\n== running: {' '.join(cmd)}  (load average {loadavg()})", flush=True)
    subprocess.run(cmd, check=True)
    with h5py.File(out, "r") as f:
        tr = {k: f["/bench/train"][k][()] for k in f["/bench/train"]}
        de = {k: f["/bench/decode"][k][()] for k in f["/bench/decode"]}
        backend = f["/bench/train"].attrs["backend"]
    if not a.out:
        os.remove(out)
    s = lambda v: v.decode() if isinstance(v, bytes) else v
    kv_train, kv_gflops, kv_decode = {}, {}, {}
    for i in range(len(tr["plugin"])):
        key = (s(tr["config"][i]), s(tr["plugin"][i]))
        th = int(tr["threads"][i])
        kv_train.setdefault(key, {})[th] = float(tr["tokens_per_second"][i])
        kv_gflops.setdefault(key, {})[th] = float(tr["gflops"][i])
    for i in range(len(de["plugin"])):
        kv_decode.setdefault(s(de["plugin"][i]), {})[int(de["threads"][i])] = float(de["tokens_per_second"][i])

    best = lambda row: max(row.items(), key=lambda kv: kv[1])
    print(f"\n== side by side, best thread setting of each (kvlab: {backend}, threads {a.threads}; PyTorch "
          f"{torch.__version__} eager on OpenBLAS, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, "
          f"torch x OpenBLAS threads {a.threads} x {a.threads}{', --naive' if a.naive else ''}); "
          f"load average now {loadavg()}")
    print(f"{'what':<28} {'PyTorch':>16} {'kvlab':>14} {'kvlab/PyTorch':>14}")
    for cname in configs:
        for p in plugins:
            (pt, pv), (kt, kv) = best(torch_train[cname, p]), best(kv_train[cname, p])
            print(f"{'train ' + cname + ' ' + p + ' tok/s':<28} {f'{pv:.0f} ({label(pt)})':>16} "
                  f"{f'{kv:.0f} ({kt}t)':>14} {kv / pv:>14.2f}")
    for p in plugins:
        (pt, pv), (kt, kv) = best(torch_decode[p]), best(kv_decode[p])
        print(f"{'decode large ' + p + ' tok/s':<28} {f'{pv:.1f} ({label(pt)})':>16} "
              f"{f'{kv:.1f} ({kt}t)':>14} {kv / pv:>14.2f}")
    print("(Nt+Mb) = PyTorch's best setting, N torch threads and M OpenBLAS threads; (Nt) = kvlab's best thread "
          "count; training: median step time; decode: batch 1, 256 steps from context 768 to 1024")
    return 0


if __name__ == "__main__":
    sys.exit(main())
