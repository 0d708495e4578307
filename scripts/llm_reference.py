#!/usr/bin/env python3
"""Independent NumPy reference forward pass for SmolLM2-135M-Instruct (GGUF, llama arch).

Depends only on numpy and gguf (gguf is used to *parse* the file; dequantisation is
done here, by hand, so that this script is independent of gguf-py's quants module).

    python scripts/llm_reference.py --gguf MODEL.gguf --prompts PROMPTS.json \
        --steps 32 --out OUT.json [--dtype float64] [--batch 0] [--self-check]

PROMPTS.json: list of {"name": str, "tokens": [int, ...], ...}. Extra keys are copied.
OUT.json: {"meta": {...}, "results": [per prompt:
    name, prompt_tokens, generated (greedy ids, exactly `steps` of them, EOS not special),
    top20 {"ids", "values"} of the first-step logits, logits (all first-step logits rounded
    to 4 decimals), margins (per generated step: chosen logit - runner-up logit),
    min_margin, step_top5 (per generated step: top-5 ids and logits, rounded to 4 decimals,
    for teacher-forced comparison)]}.

Model (llama.cpp conventions):
  x = token_embd[tok]
  per block: h = rmsnorm(x) * attn_norm; q,k,v = Wq h, Wk h, Wv h
             RoPE "normal" mode: rotate adjacent pairs (x[2i], x[2i+1]) by pos*base^(-2i/64)
             (llama.cpp's converter permuted Q/K so this equals HF's rotate_half on HF weights)
             GQA causal attention (query head h uses kv head h // (n_head/n_head_kv)), scale 1/sqrt(64)
             x += Wo attn
             h = rmsnorm(x) * ffn_norm; x += Wdown(silu(Wgate h) * Wup h)
  logits = token_embd @ (rmsnorm(x) * output_norm)     (tied embeddings: no output.weight)

Prompts are processed as a batch: projections/MLP are one GEMM over all tokens of all
prompts (prefill: every prompt token at once; decode: one new token per prompt), while
attention and the KV cache are per prompt. Batching does not change the maths
(use --batch 1 to process prompts one at a time).
"""
import argparse
import json
import sys
import time

import numpy as np
from gguf import GGUFReader

# ggml type ids (ggml.h)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0 = 0, 1, 2, 3, 8


# ----------------------------------------------------------------------------------------
# Dequantisation (hand-written; see ggml-quants.c dequantize_row_q4_1 / dequantize_row_q8_0)
# ----------------------------------------------------------------------------------------
def dequant_q4_1(raw: np.ndarray) -> np.ndarray:
    """block_q4_1 (32 weights, 20 bytes): f16 d, f16 m, 16 bytes qs.
    y[j] = d * (qs[j] & 0xF) + m ; y[j+16] = d * (qs[j] >> 4) + m   (j = 0..15)"""
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view("<f2").astype(np.float32)  # (nb, 1)
    m = b[:, 2:4].copy().view("<f2").astype(np.float32)
    qs = b[:, 4:20]
    q = np.empty((b.shape[0], 32), dtype=np.float32)
    q[:, :16] = qs & 0x0F
    q[:, 16:] = qs >> 4
    return (q * d + m).reshape(-1)


def dequant_q8_0(raw: np.ndarray) -> np.ndarray:
    """block_q8_0 (32 weights, 34 bytes): f16 d, 32 x int8 qs.  y[j] = d * qs[j]"""
    b = raw.reshape(-1, 34)
    d = b[:, 0:2].copy().view("<f2").astype(np.float32)
    qs = b[:, 2:34].copy().view(np.int8).astype(np.float32)
    return (qs * d).reshape(-1)


def dequant_q4_0(raw: np.ndarray) -> np.ndarray:
    """block_q4_0 (32 weights, 18 bytes): f16 d, 16 bytes qs. y = d * (nibble - 8)"""
    b = raw.reshape(-1, 18)
    d = b[:, 0:2].copy().view("<f2").astype(np.float32)
    qs = b[:, 2:18]
    q = np.empty((b.shape[0], 32), dtype=np.float32)
    q[:, :16] = (qs & 0x0F).astype(np.float32) - 8.0
    q[:, 16:] = (qs >> 4).astype(np.float32) - 8.0
    return (q * d).reshape(-1)


def tensor_to_f32(t) -> np.ndarray:
    """Return the tensor as float32, numpy shape reversed from GGUF ne (ne0 = last axis)."""
    ne = [int(x) for x in t.shape]
    shape = tuple(reversed(ne))
    ttype = int(t.tensor_type)
    raw = np.asarray(t.data)
    if ttype == GGML_F32:
        out = raw.reshape(-1).view(np.float32) if raw.dtype == np.uint8 else raw.reshape(-1).astype(np.float32)
    elif ttype == GGML_F16:
        out = (raw.reshape(-1).view("<f2") if raw.dtype == np.uint8 else raw.reshape(-1)).astype(np.float32)
    else:
        raw = raw.reshape(-1).view(np.uint8)
        if ttype == GGML_Q4_1:
            out = dequant_q4_1(raw)
        elif ttype == GGML_Q8_0:
            out = dequant_q8_0(raw)
        elif ttype == GGML_Q4_0:
            out = dequant_q4_0(raw)
        else:
            raise NotImplementedError(f"{t.name}: ggml type {ttype} not supported")
    n = int(np.prod(ne))
    assert out.size == n, (t.name, out.size, n)
    return np.ascontiguousarray(out.reshape(shape))


def field_value(reader, key):
    f = reader.fields[key]
    if hasattr(f, "contents"):
        return f.contents()
    v = f.parts[f.data[0]]
    return v[0] if len(v) == 1 else v


# ----------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------
class KVCache:
    def __init__(self, n_layer, n_kv, max_len, head_dim, dtype):
        self.k = np.zeros((n_layer, n_kv, max_len, head_dim), dtype=dtype)
        self.v = np.zeros((n_layer, n_kv, max_len, head_dim), dtype=dtype)
        self.pos = 0  # number of positions already stored


class Model:
    def __init__(self, path, dtype=np.float64, verbose=True):
        t0 = time.perf_counter()
        r = GGUFReader(path)
        arch = field_value(r, "general.architecture")
        assert arch == "llama", arch
        self.n_layer = int(field_value(r, "llama.block_count"))
        self.dim = int(field_value(r, "llama.embedding_length"))
        self.n_head = int(field_value(r, "llama.attention.head_count"))
        self.n_kv = int(field_value(r, "llama.attention.head_count_kv"))
        self.ffn = int(field_value(r, "llama.feed_forward_length"))
        self.eps = float(field_value(r, "llama.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(field_value(r, "llama.rope.freq_base"))
        self.head_dim = self.dim // self.n_head
        rope_dims = int(field_value(r, "llama.rope.dimension_count")) if "llama.rope.dimension_count" in r.fields else self.head_dim
        assert rope_dims == self.head_dim, "partial RoPE not implemented"
        self.dtype = dtype
        self.reader = r
        t1 = time.perf_counter()
        W = {}
        for t in r.tensors:
            W[t.name] = tensor_to_f32(t)
        t2 = time.perf_counter()
        self.f32 = W  # float32 dequantised tensors (kept for --self-check)
        cast = lambda a: a.astype(dtype, copy=False)
        self.tok_embd = cast(W["token_embd.weight"])  # (vocab, dim)
        self.out_w = cast(W["output.weight"]) if "output.weight" in W else self.tok_embd
        self.tied = "output.weight" not in W
        self.out_norm = cast(W["output_norm.weight"])
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            L = {k: cast(W[p + k + ".weight"]) for k in
                 ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
            assert L["attn_q"].shape == (self.dim, self.dim)
            assert L["attn_k"].shape == (self.n_kv * self.head_dim, self.dim)
            assert L["ffn_gate"].shape == (self.ffn, self.dim)
            assert L["ffn_down"].shape == (self.dim, self.ffn)
            self.layers.append(L)
        self.vocab = self.tok_embd.shape[0]
        # RoPE inverse frequencies: theta_i = base^(-2i/d), i = 0..d/2-1
        self.inv_freq = self.rope_base ** (-np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        t3 = time.perf_counter()
        if verbose:
            print(f"[load] parse {t1-t0:.2f}s, dequantise {len(W)} tensors {t2-t1:.2f}s, cast to {np.dtype(dtype).name} {t3-t2:.2f}s; "
                  f"layers={self.n_layer} dim={self.dim} heads={self.n_head}/{self.n_kv} head_dim={self.head_dim} "
                  f"ffn={self.ffn} vocab={self.vocab} rope_base={self.rope_base} eps={self.eps:g} tied={self.tied}",
                  file=sys.stderr)

    def new_cache(self, max_len):
        return KVCache(self.n_layer, self.n_kv, max_len, self.head_dim, self.dtype)

    def rmsnorm(self, x, w):
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(ms + self.eps) * w

    def rope(self, x, cos, sin):
        """x: (T, H, D); cos/sin: (T, D/2). llama.cpp NORMAL mode: adjacent pairs."""
        x0 = x[..., 0::2]
        x1 = x[..., 1::2]
        c = cos[:, None, :]
        s = sin[:, None, :]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def forward(self, segments):
        """segments: list of (cache, tokens). Appends to each cache; returns the final-normed
        hidden state of the LAST token of every segment, shape (n_segments, dim)."""
        toks = np.concatenate([np.asarray(t, dtype=np.int64) for _, t in segments])
        lens = [len(t) for _, t in segments]
        offs = np.concatenate([[0], np.cumsum(lens)]).astype(int)
        pos = np.concatenate([np.arange(c.pos, c.pos + n) for (c, _), n in zip(segments, lens)])
        for (c, _), n in zip(segments, lens):
            assert c.pos + n <= c.k.shape[2], "KV cache too small"
        T = toks.size
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]
        cos = np.cos(ang).astype(self.dtype)
        sin = np.sin(ang).astype(self.dtype)
        H, KV, D = self.n_head, self.n_kv, self.head_dim
        G = H // KV
        scale = 1.0 / np.sqrt(D)
        x = self.tok_embd[toks]  # (T, dim), a copy
        for li, L in enumerate(self.layers):
            h = self.rmsnorm(x, L["attn_norm"])
            q = (h @ L["attn_q"].T).reshape(T, H, D)
            k = (h @ L["attn_k"].T).reshape(T, KV, D)
            v = (h @ L["attn_v"].T).reshape(T, KV, D)
            q = self.rope(q, cos, sin)
            k = self.rope(k, cos, sin)
            att = np.empty((T, H, D), dtype=self.dtype)
            for si, ((c, _), n) in enumerate(zip(segments, lens)):
                o, p0 = offs[si], c.pos
                c.k[li, :, p0:p0 + n] = k[o:o + n].transpose(1, 0, 2)
                c.v[li, :, p0:p0 + n] = v[o:o + n].transpose(1, 0, 2)
                Kc = c.k[li, :, :p0 + n]  # (KV, S, D)
                Vc = c.v[li, :, :p0 + n]
                qs = q[o:o + n].reshape(n, KV, G, D).transpose(1, 2, 0, 3)  # (KV, G, n, D); head h -> kv h//G
                s = np.matmul(qs, Kc[:, None].transpose(0, 1, 3, 2)) * scale  # (KV, G, n, S)
                S = p0 + n
                qpos = p0 + np.arange(n)
                mask = np.arange(S)[None, :] > qpos[:, None]  # (n, S) future positions
                if mask.any():
                    s = np.where(mask[None, None], -np.inf, s)
                s = s - s.max(axis=-1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=-1, keepdims=True)
                out = np.matmul(pr, Vc[:, None])  # (KV, G, n, D)
                att[o:o + n] = out.transpose(2, 0, 1, 3).reshape(n, H, D)
            x = x + att.reshape(T, self.dim) @ L["attn_output"].T
            h = self.rmsnorm(x, L["ffn_norm"])
            g = h @ L["ffn_gate"].T
            u = h @ L["ffn_up"].T
            a = g / (1.0 + np.exp(-g)) * u  # silu(g) * u
            x = x + a @ L["ffn_down"].T
        for (c, _), n in zip(segments, lens):
            c.pos += n
        last = x[offs[1:] - 1]
        return self.rmsnorm(last, self.out_norm)

    def logits(self, hidden):
        return hidden @ self.out_w.T  # (n, vocab)


def top2_margin(lg):
    i2 = np.argpartition(-lg, 1)[:2]
    a, b = sorted(lg[i2], reverse=True)
    return float(a - b)


# ----------------------------------------------------------------------------------------
def self_check(model, prompts):
    from gguf.quants import dequantize  # only used here
    t0 = time.perf_counter()
    worst = 0.0
    for t in model.reader.tensors:
        ref = np.asarray(dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32)
        mine = model.f32[t.name]
        ref = ref.reshape(mine.shape)
        if not np.array_equal(ref, mine):
            d = float(np.abs(ref - mine).max())
            worst = max(worst, d)
            print(f"[self-check] MISMATCH {t.name}: max abs diff {d}", file=sys.stderr)
    print(f"[self-check] dequantisation of {len(model.reader.tensors)} tensors vs gguf.quants.dequantize: "
          f"{'bit-identical' if worst == 0 else 'worst diff %g' % worst} ({time.perf_counter()-t0:.2f}s)", file=sys.stderr)
    assert worst == 0.0
    # KV cache consistency: whole-prompt prefill == token-by-token feed; batch == single
    toks = prompts[0]["tokens"]
    c1 = model.new_cache(len(toks) + 1)
    l1 = model.logits(model.forward([(c1, toks)]))[0]
    c2 = model.new_cache(len(toks) + 1)
    for t in toks:
        l2 = model.logits(model.forward([(c2, [t])]))[0]
    d = float(np.abs(l1 - l2).max())
    print(f"[self-check] prefill vs token-by-token ({len(toks)} tokens): max |dlogit| = {d:.3g}", file=sys.stderr)
    assert d < 1e-6 if model.dtype == np.float64 else d < 1e-2
    if len(prompts) > 1:
        ca, cb = model.new_cache(len(toks) + 1), model.new_cache(len(prompts[1]["tokens"]) + 1)
        lb = model.logits(model.forward([(ca, toks), (cb, prompts[1]["tokens"])]))[0]
        d = float(np.abs(l1 - lb).max())
        print(f"[self-check] batched vs single prompt: max |dlogit| = {d:.3g}", file=sys.stderr)
        assert d < 1e-6 if model.dtype == np.float64 else d < 1e-2


def run(model, prompts, steps, batch):
    results = [None] * len(prompts)
    order = list(range(len(prompts)))
    bs = len(order) if batch <= 0 else batch
    t_prefill = t_decode = 0.0
    for b0 in range(0, len(order), bs):
        idx = order[b0:b0 + bs]
        caches = {i: model.new_cache(len(prompts[i]["tokens"]) + steps) for i in idx}
        t0 = time.perf_counter()
        lg = model.logits(model.forward([(caches[i], prompts[i]["tokens"]) for i in idx]))
        t1 = time.perf_counter()
        t_prefill += t1 - t0
        gen = {i: [] for i in idx}
        margins = {i: [] for i in idx}
        step_top = {i: [] for i in idx}
        for j, i in enumerate(idx):
            l = lg[j]
            top = np.argsort(-l, kind="stable")[:20]
            results[i] = {
                "name": prompts[i].get("name", str(i)),
                "prompt_tokens": len(prompts[i]["tokens"]),
                "top20": {"ids": [int(t) for t in top], "values": [round(float(l[t]), 6) for t in top]},
                "logits": [round(float(v), 4) for v in l],
            }
        for step in range(steps):
            nxt = {}
            for j, i in enumerate(idx):
                l = lg[j]
                t = int(np.argmax(l))  # ties -> lowest id
                gen[i].append(t)
                margins[i].append(top2_margin(l))
                t5 = np.argpartition(-l, 5)[:5]
                t5 = t5[np.lexsort((t5, -l[t5]))]  # by logit desc, then id
                step_top[i].append({"ids": [int(a) for a in t5], "values": [round(float(l[a]), 4) for a in t5]})
                nxt[i] = t
            if step == steps - 1:
                break
            lg = model.logits(model.forward([(caches[i], [nxt[i]]) for i in idx]))
        t_decode += time.perf_counter() - t1
        for i in idx:
            results[i]["generated"] = gen[i]
            results[i]["margins"] = [round(m, 6) for m in margins[i]]
            results[i]["min_margin"] = round(min(margins[i]), 6) if margins[i] else None
            results[i]["step_top5"] = step_top[i]
            for k, v in prompts[i].items():
                if k not in ("tokens",) and k not in results[i]:
                    results[i][k] = v
    return results, t_prefill, t_decode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--batch", type=int, default=0, help="prompts per batch (0 = all at once)")
    ap.add_argument("--self-check", action="store_true",
                    help="compare dequantisation with gguf.quants.dequantize and check KV-cache/batching consistency")
    args = ap.parse_args()
    T0 = time.perf_counter()
    prompts = json.load(open(args.prompts))
    dtype = np.float64 if args.dtype == "float64" else np.float32
    model = Model(args.gguf, dtype)
    if args.self_check:
        self_check(model, prompts)
    T1 = time.perf_counter()
    results, tp, td = run(model, prompts, args.steps, args.batch)
    T2 = time.perf_counter()
    ntok = sum(len(p["tokens"]) for p in prompts)
    meta = {
        "gguf": args.gguf, "steps": args.steps, "dtype": args.dtype, "n_prompts": len(prompts),
        "rope": "llama.cpp normal (adjacent pairs)", "rope_base": model.rope_base, "rms_eps": model.eps,
        "argmax_ties": "lowest id", "margin": "logit(chosen) - logit(runner-up), per generated step",
        "step_top5": "per generated step, top-5 ids/logits of the distribution the token was chosen from",
        "logits": "first-step (after prefill) logits, rounded to 4 decimals",
        "timing_s": {"load": round(T1 - T0, 3), "prefill": round(tp, 3), "decode": round(td, 3), "total": round(T2 - T0, 3)},
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f)
    print(f"[time] load+checks {T1-T0:.2f}s; prefill {ntok} tokens / {len(prompts)} prompts {tp:.2f}s; "
          f"decode {args.steps} steps x {len(prompts)} prompts {td:.2f}s; total {T2-T0:.2f}s", file=sys.stderr)
    near = [r["name"] for r in results if r["min_margin"] is not None and r["min_margin"] < 0.1]
    print(f"[result] wrote {args.out}; {len(near)}/{len(results)} prompts have a top-2 margin < 0.1 at some step", file=sys.stderr)


if __name__ == "__main__":
    main()
