"""The official OpenAI Python client against a Mesh control plane, unchanged: only its base
URL and key point at the mesh. Run by tests/e2e/tests/openai_client.rs with MESH_URL and
MESH_TOKEN set; exits non-zero (with the reason) when any answer is not what OpenAI's own
API would give in shape."""

import os

import openai

client = openai.OpenAI(
    base_url=os.environ["MESH_URL"] + "/v1",
    api_key=os.environ["MESH_TOKEN"],
    max_retries=0,
)
question = [{"role": "user", "content": "What is the capital of France?"}]
expected = "The capital of France is Paris."

# The models of the network, chat and embeddings.
models = sorted(m.id for m in client.models.list())
assert "smollm2-135m-instruct" in models, models
assert "all-minilm-l6-v2" in models, models

# A whole answer.
answer = client.chat.completions.create(
    model="smollm2-135m-instruct", messages=question, temperature=0, max_tokens=16
)
assert answer.object == "chat.completion", answer
assert answer.choices[0].message.role == "assistant", answer
assert answer.choices[0].message.content == expected, answer
assert answer.choices[0].finish_reason == "stop", answer
assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (37, 7), answer
assert answer.usage.total_tokens == 44, answer

# The same answer streamed, with the usage at the end.
stream = client.chat.completions.create(
    model="smollm2-135m-instruct",
    messages=question,
    temperature=0,
    max_tokens=16,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage, ids = [], None, None, set()
for chunk in stream:
    ids.add(chunk.id)
    if chunk.choices:
        if chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    if chunk.usage:
        usage = chunk.usage
assert "".join(parts) == expected, parts
assert len(parts) >= 4, f"streamed in {len(parts)} pieces: {parts}"
assert finish == "stop", finish
assert usage is not None and usage.total_tokens == 44, usage
assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-job_"), ids

# Seeded sampling: the same seed gives the same text.
warm = dict(
    model="smollm2-135m-instruct",
    messages=[{"role": "user", "content": "Write one sentence about the sea."}],
    temperature=0.9,
    top_p=0.95,
    seed=11,
    max_tokens=24,
)
first = client.chat.completions.create(**warm).choices[0].message.content
again = "".join(
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(**warm, stream=True)
    if c.choices
)
assert first == again, (first, again)

# Embeddings through the same client.
vectors = client.embeddings.create(
    model="all-minilm-l6-v2", input=["Mesh runs on our own devices.", "hello"]
)
assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384, vectors

# Errors come as the client's own exceptions, with the server's message.
try:
    client.chat.completions.create(model="gpt-4", messages=question)
    raise AssertionError("an unknown model was served")
except openai.NotFoundError as e:
    assert "gpt-4" in str(e), e
try:
    client.chat.completions.create(
        model="smollm2-135m-instruct", messages=question, max_tokens=100000, stream=True
    )
    raise AssertionError("max_tokens 100000 was taken")
except openai.BadRequestError as e:
    assert e.body["param"] == "max_tokens", e.body
bad = openai.OpenAI(base_url=client.base_url, api_key="not-a-token", max_retries=0)
try:
    bad.chat.completions.create(model="smollm2-135m-instruct", messages=question)
    raise AssertionError("a bad token was served")
except openai.AuthenticationError:
    pass

print("openai client: all answers as expected")
