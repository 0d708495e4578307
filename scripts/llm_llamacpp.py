"""llama.cpp (through llama-cpp-python, built from its source package) on Mesh's chat model:
an independent engine on the same GGUF weights. Reads a JSON request on stdin, writes JSON on
stdout. Used by the chat scoring report (host/tests/chat.rs, `scoring_report`: do another
engine's greedy answers pass Mesh's verifier?) and by the chat benchmark
(tests/e2e/tests/bench_chat.rs, engine (c)).

Request: {"gguf": path, "threads": 2, "prompts": [{"tokens": [ids], "max_tokens": n,
          "stop_at_end_of_turn": true}]}
Answer:  {"answers": [{"tokens": [ids], "ended_turn": bool, "prompt_s": s, "first_token_s": s,
          "generate_s": s}], "peak_rss_bytes": n, "llama_cpp_python": version}

Greedy decoding (argmax, the lowest id among equal logits), prompts given as token ids so
both engines see exactly the same context. Setup (once, about ten minutes on two cores):
    python3 -m venv $MESH_CACHE_DIR/llama-venv
    $MESH_CACHE_DIR/llama-venv/bin/pip install cmake ninja scikit-build-core numpy
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" \\
        $MESH_CACHE_DIR/llama-venv/bin/pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36
"""

import json
import resource
import sys
import time

import llama_cpp
import numpy as np

END_OF_TURN = 2  # <|im_end|>


def main() -> None:
    request = json.load(sys.stdin)
    llm = llama_cpp.Llama(
        model_path=request["gguf"],
        n_ctx=2048,
        n_batch=512,
        n_threads=request.get("threads", 2),
        n_threads_batch=request.get("threads", 2),
        verbose=False,
    )
    vocab = llm.n_vocab()
    answers = []
    for prompt in request["prompts"]:
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt["tokens"])
        prompt_s = time.perf_counter() - started
        tokens, ended_turn, first_token_s = [], False, None
        generating = time.perf_counter()
        while len(tokens) < prompt["max_tokens"]:
            pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            logits = np.ctypeslib.as_array(pointer, shape=(vocab,))
            token = int(np.argmax(logits))
            if first_token_s is None:
                first_token_s = time.perf_counter() - started
            if token == END_OF_TURN and prompt.get("stop_at_end_of_turn", True):
                ended_turn = True
                break
            tokens.append(token)
            if len(tokens) == prompt["max_tokens"]:
                break
            llm.eval([token])
        answers.append(
            {
                "tokens": tokens,
                "ended_turn": ended_turn,
                "prompt_s": prompt_s,
                "first_token_s": first_token_s,
                "generate_s": time.perf_counter() - generating,
            }
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    json.dump(
        {
            "answers": answers,
            "peak_rss_bytes": peak,
            "llama_cpp_python": llama_cpp.__version__,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
