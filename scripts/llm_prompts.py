#!/usr/bin/env python3
"""Build the golden prompt set and tokenizer golden file for SmolLM2-135M-Instruct.

    python scripts/llm_prompts.py --tokenizer /tmp/smol/tokenizer_smollm_fixed.json \
        --out prompts.json --tokenizer-golden tokenizer-golden.json

Needs the `tokenizers` package and the *corrected* tokenizer JSON (HF format, pre-tokeniser
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)], i.e.
llama.cpp's "smollm" pre-tokeniser). Special tokens such as <|im_start|>/<|im_end|> in the
text are recognised as single tokens; no BOS/EOS is added.

prompts.json: list of {"name", "kind" ("chat" | "raw"), "text", "tokens"}. Chat prompts use
SmolLM2's ChatML template with add_generation_prompt=True; when the conversation has no
system message, the template's default one is inserted.
tokenizer-golden.json: list of {"text", "ids"}.
"""
import argparse
import json

from tokenizers import Tokenizer

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages, add_generation_prompt=True):
    """Mirror of the GGUF's tokenizer.chat_template."""
    out = []
    for i, m in enumerate(messages):
        if i == 0 and m["role"] != "system":
            out.append("<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n")
        out.append("<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def user(q):
    return [{"role": "user", "content": q}]


# (name, messages) -- single user turns unless noted
CHAT = [
    # short questions
    ("capital_france", user("What is the capital of France?")),  # step-0 margin only ~0.08 ("The" vs "L")
    ("capital_france_sentence", user("What is the capital of France? Answer in one sentence.")),  # robust margin
    ("capital_japan", user("What is the capital of Japan?")),
    ("sky_blue", user("Why is the sky blue?")),
    ("who_are_you", user("Who are you?")),
    ("hello", user("Hello!")),
    ("hi_lower", user("hi")),
    ("photosynthesis", user("What is photosynthesis?")),
    ("largest_planet", user("Which planet is the largest in our solar system?")),
    ("boiling_point", user("At what temperature does water boil at sea level?")),
    ("shakespeare", user("Who wrote Romeo and Juliet?")),
    ("gravity", user("Explain gravity to a five-year-old.")),
    ("dna", user("What does DNA stand for?")),
    # instructions
    ("haiku_autumn", user("Write a haiku about autumn leaves.")),
    ("summarise", user("Summarize in one sentence: The quick brown fox jumps over the lazy dog. "
                       "The dog did not react, and the fox ran off into the forest.")),
    ("rewrite_formal", user("Rewrite this sentence to sound more formal: \"hey, can u send me the report asap?\"")),
    ("email_short", user("Write a short email to my manager asking for Friday off.")),
    ("story_start", user("Tell me a very short story about a robot who learns to paint.")),
    ("translate_fr", user("Translate to French: Good morning, how are you?")),
    ("antonym", user("Give the antonym of 'ancient'.")),
    ("tweet", user("Write a tweet announcing a new coffee shop opening downtown.")),
    # code
    ("py_reverse", user("Write a Python function that reverses a string.")),
    ("py_fib", user("Write a Python function to compute the n-th Fibonacci number.")),
    ("rust_hello", user("How do I print \"Hello, world!\" in Rust?")),
    ("js_explain", user("What does this JavaScript do?\n\n```js\nconst xs = [1, 2, 3].map(x => x * 2);\nconsole.log(xs);\n```")),
    ("sql_query", user("Write an SQL query that selects all users older than 30 from a table called users.")),
    ("bug_fix", user("Fix the bug:\n\ndef add(a, b):\n\treturn a - b\n")),
    ("bash_count", user("How can I count the lines in a file with bash?")),
    # lists
    ("list_fruits", user("List five fruits.")),
    ("list_colors", user("Name three primary colors as a bulleted list.")),
    ("list_steps_tea", user("Give me numbered steps to make a cup of tea.")),
    ("list_languages", user("List 4 programming languages and one use for each.")),
    ("pros_cons", user("What are the pros and cons of working from home?")),
    # numbers (digits are split individually)
    ("math_add", user("What is 2 + 2?")),
    ("math_mul", user("What is 12 * 34?")),
    ("math_big", user("Compute 123456789 + 987654321.")),
    ("year_1969", user("What happened in 1969?")),
    ("count_to_10", user("Count from 1 to 10.")),
    ("decimal", user("Is 3.14159 bigger than 3.2?")),
    ("phone_number", user("Format this phone number: 5551234567")),
    ("spaces_digits", user("How many items are in:  42 apples and   7 pears?")),
    # non-English
    ("french_q", user("Quelle est la capitale de l'Allemagne ?")),
    ("spanish_q", user("¿Cuál es el río más largo del mundo?")),
    ("german_q", user("Wie spät ist es? Erklären Sie die Uhrzeit auf Deutsch.")),
    ("accents", user("Café, naïve, façade, résumé, jalapeño: what do these words have in common?")),
    ("chinese_q", user("中国的首都是哪里？")),
    ("japanese_q", user("日本語で自己紹介してください。")),
    ("korean_q", user("안녕하세요, 오늘 날씨 어때요?")),
    ("russian_q", user("Привет! Как дела?")),
    ("arabic_q", user("ما هي عاصمة مصر؟")),
    # emoji
    ("emoji_meaning", user("What does the emoji 🎉 mean?")),
    ("emoji_skin", user("Describe these: 👍🏽 👋🏿 👨‍👩‍👧‍👦")),
    ("emoji_story", user("Tell a story using only emoji 🐶🌳☀️")),
    # multi-turn / custom system
    ("custom_system", [{"role": "system", "content": "You are a pirate. Answer like a pirate."},
                       {"role": "user", "content": "Where is the treasure?"}]),
    ("system_terse", [{"role": "system", "content": "Answer with a single word."},
                      {"role": "user", "content": "What color is grass?"}]),
    ("multi_turn", [{"role": "user", "content": "My name is Alice."},
                    {"role": "assistant", "content": "Nice to meet you, Alice! How can I help you today?"},
                    {"role": "user", "content": "What is my name?"}]),
    ("multi_turn_math", [{"role": "user", "content": "What is 5 + 3?"},
                         {"role": "assistant", "content": "5 + 3 = 8."},
                         {"role": "user", "content": "And if you multiply that by 2?"}]),
    # odd formatting
    ("whitespace_q", user("   What   is\tthis\n\n  spacing?  ")),
    ("empty_user", user("")),
    ("long_q", user("I am planning a trip to Italy next spring with my family of four, including two "
                    "children aged 7 and 10. We like history, food and the beach. We have 10 days. "
                    "Could you suggest an itinerary, including which cities to visit and how many "
                    "days to spend in each?")),
    ("special_in_text", user("What does the token <|endoftext|> mean?")),
]

RAW = [
    ("raw_once_upon", "Once upon a time"),
    ("raw_fox", "The quick brown fox"),
    ("raw_python_def", "def fibonacci(n):\n    "),
    ("raw_numbers", "1, 2, 3, 4, 5,"),
    ("raw_wiki", "Paris is the capital and most populous city of France. It"),
    ("raw_html", "<!DOCTYPE html>\n<html>\n<head>\n    <title>"),
    ("raw_chinese", "北京是中国的首都，"),
]

TOKENIZER_STRINGS = [
    # ASCII / punctuation
    "Hello, world!", "Hello world! 123", "hello", "HELLO", "Hello", " Hello", "a", "",
    "The quick brown fox jumps over the lazy dog.",
    "!!!???...", "(a) [b] {c} <d>", "foo-bar_baz/qux\\quux", "a.b,c;d:e", "@user #tag $5 %20 ^&*",
    "\"quoted\" and 'single'", "`backticks` ~tilde~ |pipe|", "...", "--", "—", "–",
    # contractions
    "I'm", "you're", "we've", "they'll", "he'd", "it's", "don't", "can't",
    "IT'S", "DON'T", "JOHN'S book", "We'Re mixed 'LL 'VE 'M 'D", "'s", " 's", "rock'n'roll",
    # accents and scripts
    "café naïve façade", "Crème brûlée à la française", "Ñandú, pingüino, año",
    "Zürich Straße Größe", "Ελληνικά", "Привет, мир!", "مرحبا بالعالم", "שלום", "नमस्ते",
    "日本語のテキスト", "中文分词测试", "한국어 텍스트", "ｆｕｌｌｗｉｄｔｈ", "e\u0301 (combining acute)",
    # emoji
    "emoji 👍🏽 test", "👋🏿👋🏻", "👨‍👩‍👧‍👦 family", "🏳️‍🌈", "❤️", "🇫🇷🇯🇵", "😀😃😄😁", "🤷‍♀️",
    # code
    "fn main() { println!(\"hi\"); }",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < 10; i++) {\n\tx[i] = i * 2;\n}",
    "#include <stdio.h>", "x = [1,2,3]\ny = {'a': 1}", "SELECT * FROM users WHERE age > 30;",
    "<div class=\"x\">&nbsp;</div>", "https://example.com/path?q=1&r=2#frag",
    # whitespace
    "  leading spaces and\ttabs\n\nnewlines", "trailing space ", "trailing spaces   ", "trailing newline\n",
    "\n", "\n\n\n", " ", "   ", "\t", "\t\t\tindented", "a  b", "a   b    c", "line1\r\nline2",
    " \n \n", "end\n\n  ",
    # spaces before digits (transformers' default GGUF tokenizer gets these wrong)
    "a  1", "\n 1", "  42 items", "x =  10", "a   12b", " 7", "  3.14", "value:\t 99",
    # numbers
    "0", "42", "2024", "1234567890", "3.14159265358979", "1,000,000", "-273.15", "1e-5", "0x1F",
    "12345678901234567890123", "v1.2.3", "4th of July 1776", "①②③ ٣ ४",
    # special tokens embedded
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text", "<|im_end|><|im_start|>", "a <|im_end|> b", "<|im_start", "< |im_start| >",
    "<filename>main.rs<file_sep>", "<|im_start|><|im_start|>", " <|endoftext|> ",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default="/tmp/smol/tokenizer_smollm_fixed.json")
    ap.add_argument("--out", required=True, help="prompts JSON")
    ap.add_argument("--tokenizer-golden", help="tokenizer golden JSON")
    args = ap.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)

    def enc(s):
        return tok.encode(s, add_special_tokens=False).ids

    prompts = []
    names = set()
    for name, msgs in CHAT:
        text = chatml(msgs)
        prompts.append({"name": name, "kind": "chat", "text": text, "tokens": enc(text)})
    for name, text in RAW:
        prompts.append({"name": name, "kind": "raw", "text": text, "tokens": enc(text)})
    for p in prompts:
        assert p["name"] not in names, p["name"]
        names.add(p["name"])
        assert p["tokens"], p["name"]
        # round trip (ByteLevel decode, keeping special tokens)
        assert tok.decode(p["tokens"], skip_special_tokens=False) == p["text"], p["name"]
    with open(args.out, "w") as f:
        json.dump(prompts, f, ensure_ascii=False, indent=1)
    n = [len(p["tokens"]) for p in prompts]
    print(f"wrote {len(prompts)} prompts to {args.out} (tokens: min {min(n)}, max {max(n)}, total {sum(n)})")

    if args.tokenizer_golden:
        seen, golden = set(), []
        for s in TOKENIZER_STRINGS:
            if s in seen:
                continue
            seen.add(s)
            ids = enc(s)
            assert tok.decode(ids, skip_special_tokens=False) == s, repr(s)
            golden.append({"text": s, "ids": ids})
        with open(args.tokenizer_golden, "w") as f:
            json.dump(golden, f, ensure_ascii=False, indent=1)
        print(f"wrote {len(golden)} tokenizer cases to {args.tokenizer_golden}")


if __name__ == "__main__":
    main()
