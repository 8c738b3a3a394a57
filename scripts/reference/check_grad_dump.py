#!/usr/bin/python3
"""Independent check of a kvlab gradient dump against model.md, in PyTorch.

Reads DUMP.h5 (model.md's gradient-dump layout), rebuilds the model from the spec text
alone (no kvlab code), recomputes the loss and every gradient with autograd in float64,
and compares them with /loss and /grads. Exits 1 on a mismatch.

usage: scripts/reference/check_grad_dump.py DUMP.h5 [--rtol 1e-4]
Needs python3-torch and python3-h5py (Debian packages).
"""
import argparse
import sys

import h5py
import numpy as np
import torch


def rmsnorm(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope(u, theta):
    # half-split RoPE over the last dim; u: [B, T, n, d]
    T, d = u.shape[1], u.shape[-1]
    j = torch.arange(d // 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2.0 * j / d)
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    u1, u2 = u[..., : d // 2], u[..., d // 2:]
    return torch.cat([u1 * c - u2 * s, u2 * c + u1 * s], -1)


def attend(q, k, v, scale):
    # q, k: [B, T, H, dq], v: [B, T, H, dv]
    s = torch.einsum("bthd,bshd->bhts", q, k) * scale
    T = q.shape[1]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    p = torch.softmax(s.masked_fill(mask, float("-inf")), -1)
    return torch.einsum("bhts,bshd->bthd", p, v)


def attention(kind, P, pre, x, hp):
    B, T, _ = x.shape
    H, dh, theta, eps = hp["n_heads"], hp["head_dim"], hp["rope_theta"], hp["norm_eps"]
    W = lambda n: P[pre + n]
    if kind in ("mha", "gqa", "mqa"):
        G = H if kind == "mha" else (1 if kind == "mqa" else hp["n_kv_heads"])
        q = rope((x @ W("wq").T).view(B, T, H, dh), theta)
        k = rope((x @ W("wk").T).view(B, T, G, dh), theta)
        v = (x @ W("wv").T).view(B, T, G, dh)
        rep = H // G
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        o = attend(q, k, v, 1.0 / dh ** 0.5)
    elif kind == "mla":
        dR = hp["qk_rope_head_dim"]
        if hp.get("q_lora_rank", 0) > 0:
            cq = rmsnorm(x @ W("w_dq").T, W("q_norm"), eps)
            qc, qr = cq @ W("w_uq").T, cq @ W("w_qr").T
        else:
            qc, qr = x @ W("wq").T, x @ W("w_qr").T
        ckv = rmsnorm(x @ W("w_dkv").T, W("kv_norm"), eps)
        kc = (ckv @ W("w_uk").T).view(B, T, H, dh)
        v = (ckv @ W("w_uv").T).view(B, T, H, dh)
        kr = rope((x @ W("w_kr").T).view(B, T, 1, dR), theta).expand(B, T, H, dR)
        qr = rope(qr.view(B, T, H, dR), theta)
        q = torch.cat([qc.view(B, T, H, dh), qr], -1)
        k = torch.cat([kc, kr], -1)
        o = attend(q, k, v, 1.0 / (dh + dR) ** 0.5)
    else:
        raise SystemExit(f"no reference for attention '{kind}'")
    return o.reshape(B, T, H * dh) @ W("wo").T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump")
    ap.add_argument("--rtol", type=float, default=1e-4)
    a = ap.parse_args()
    f = h5py.File(a.dump, "r")
    hp = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f["params"].attrs.items()}
    hp = {k: (v if isinstance(v, str) else v.item()) for k, v in hp.items()}
    P = {n: torch.tensor(np.asarray(f["params"][n]), dtype=torch.float64, requires_grad=True) for n in f["params"]}
    inputs = torch.tensor(np.asarray(f["batch/inputs"]), dtype=torch.long)
    targets = torch.tensor(np.asarray(f["batch/targets"]), dtype=torch.long)
    eps = hp["norm_eps"]
    x = P["embed"][inputs]
    for l in range(hp["n_layers"]):
        pre = f"layers.{l}."
        h = x + attention(hp["attention"], P, pre + "attn.", rmsnorm(x, P[pre + "attn_norm"], eps), hp)
        z = rmsnorm(h, P[pre + "mlp_norm"], eps)
        x = h + (torch.nn.functional.silu(z @ P[pre + "mlp.w_gate"].T) * (z @ P[pre + "mlp.w_up"].T)) @ P[pre + "mlp.w_down"].T
    head = P["embed"] if hp["tie_embeddings"] else P["lm_head"]
    logits = rmsnorm(x, P["final_norm"], eps) @ head.T
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1)
    loss.backward()
    ok = True
    ref_loss, dump_loss = loss.item(), float(np.asarray(f["loss"]))
    rel = abs(ref_loss - dump_loss) / abs(ref_loss)
    print(f"loss: reference {ref_loss:.7f}  dump {dump_loss:.7f}  rel.err {rel:.1e}")
    ok &= rel <= a.rtol
    worst = 0.0
    for n in P:
        g_ref = P[n].grad.numpy()
        g = np.asarray(f["grads"][n], dtype=np.float64)
        err = np.abs(g - g_ref).max() / max(np.abs(g_ref).max(), 1e-30)
        worst = max(worst, err)
        if err > a.rtol:
            print(f"MISMATCH {n}: max rel.err {err:.2e}")
            ok = False
    extra = set(f["params"]) ^ set(f["grads"])
    if extra:
        print(f"MISMATCH: /params and /grads differ in {sorted(extra)}")
        ok = False
    print(f"{len(P)} gradient tensors, worst max-relative error {worst:.2e}: {'MATCH' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
