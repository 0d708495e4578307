"""Summarise `mesh-host exec` output for the demo: sizes, two similarities, the receipt."""
import json
import sys

doc = json.load(sys.stdin)
e = doc["embeddings"]
receipt = doc["receipt"]


def cos(a, b):
    return sum(x * y for x, y in zip(a, b))


print(f"    {len(e)} embeddings of {len(e[0])} dimensions, {doc['tokens']} tokens")
print(f"    cosine(sentence 1, sentence 2) = {cos(e[0], e[1]):.4f} (related)")
print(f"    cosine(sentence 1, sentence 3) = {cos(e[0], e[2]):.4f} (unrelated)")
print(f"    receipt: component {receipt['component'][:19]}...  model {receipt['models'][0]['hash'][:19]}...  output {receipt['output'][:19]}...")
timings = receipt["timings"]
print(f"    timings: instantiate {timings['instantiate_us']} us, run {timings['run_us']} us (inference {timings['inference_us']} us)")
