#!/usr/bin/env python3
"""Regenerate tests/golden.jsonl: reference token ids for the mesh-tokenizer crate.

The ids come from the HuggingFace `tokenizers` library (the "fast" tokenizer that
sentence-transformers uses) loaded from all-MiniLM-L6-v2's tokenizer.json, with
truncation at 256 tokens and padding disabled. Each output line is
{"text": ..., "ids": [...]}, ids including [CLS] and [SEP].

Inputs: every "text" of the shared embeddings reference set, then the tricky
strings in EXTRA below (Unicode edge cases the BERT normaliser treats specially).

Usage (needs `pip install tokenizers`; the golden file was made with 0.23.3):

    python sdk/tokenizer/tests/make_golden.py \
        --tokenizer /path/to/all-MiniLM-L6-v2/tokenizer.json \
        --reference /work/shared/data/embeddings-reference.jsonl \
        > sdk/tokenizer/tests/golden.jsonl
"""

import argparse
import json
import sys

from tokenizers import Tokenizer

MAX_TOKENS = 256

EXTRA = [
    "",
    "   \t\n  ",
    "Café déjà vu — naïve façade, coöperate, résumé, CAFÉ",
    "ÀÉÎÕÜ ÅNGSTRÖM Ça ŞİŞLİ İstanbul ı",
    "北京欢迎你！我爱自然语言处理。",
    "日本語のテキスト、カタカナとひらがな。ｶﾀｶﾅ",
    "한국어 텍스트 처리 안녕하세요",
    "Emoji: 😀🎉👍🏽 👨\u200d👩\u200d👧 ❤\ufe0f 🥰 done",
    "ctrl\x00chars\x01\x07\x1b[0m\x7f\u0085here\ufffd end",
    "zero\u200bwidth\u200cjoin\u200dner\ufeffbom\u00adsoft\u2060wj",
    "combining: e\u0301 a\u0308 n\u0303 o\u0327\u0301 q\u0323\u0307 a\u0330\u0301",
    "a" * 100,
    "a" * 101,
    "supercalifragilistic" * 6 + " short",
    "é" * 101 + " ok",
    "!!!???...---,,,;;;:::((([[]]]{{}}~~~``''\"\"@#$%^&*_+=|\\/<>",
    "mixed\twhite\nspace\r\nand\u00a0nbsp\u2003em\u3000ideo\u2028line\u2029para\x0bvt\x0cff\x1cfs",
    "ΑΘΗΝΑ ΟΔΟΣ Ελληνικά ΣΊΣΥΦΟΣ ἀλήθεια",
    "МОСКВА Привет мир ЁЛКА Їжак Ўзбек",
    "ﬁnance ﬂow ﬀ ﬃ ﬆ Ǆ ǅ ǆ",
    "ＦＵＬＬ－ｗｉｄｔｈ １２３ ！？（）",
    "Ohm \u2126 Kelvin \u212a Angstrom \u212b ß ẞ ŉ Straße",
    "[CLS] [SEP] [MASK] [PAD] [UNK] x[SEP]y [sep] [ MASK ] [[CLS]] [MASK",
    "U.S.A. e.g. i.e. 3.14159 1,000,000 $100 50% #hashtag @user C++ C# .NET",
    "http://example.com/path?q=1&r=2#frag user@example.com",
    "Arabic: مرحبا بالعالم; Hebrew: שָׁלוֹם; Hindi: नमस्ते दुनिया; Thai: สวัสดีครับ",
    "compat \uf900\uf901 \U0002f800 ext-b \U00020000\U00020001 ext-e \U0002b820\U0002b8ff\U0002b920",
    "private \ue000abc\U000f0000 use",
    "Greek question mark\u037e ano teleia\u0387 varia\u1fef",
    "∑ ∫ √ ≤ ≥ ± × ÷ ° € £ ¥ © ® ™ § ¶ • … ‰ ′ ″ ‹ › « » „ “ ” ‘ ’ ‐ ‑ – —",
    "don't won't it's o'clock rock'n'roll",
    "unicode-9 cf a\u08e2b mn e\u08d4 po a\u2e43b a\u2e4fb dives \U00011938",
    "Devanagari \u0915\u093f\u094d\u0937 Tamil \u0b95\u0bca Hangul jamo \u1100\u1161\u11a8",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "\u00a0leading and trailing\u3000",
    "tab\tonly",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="path to tokenizer.json")
    parser.add_argument("--reference", required=True, help="embeddings-reference.jsonl")
    args = parser.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    tok.enable_truncation(max_length=MAX_TOKENS)
    tok.no_padding()

    with open(args.reference, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    texts += EXTRA

    for text in texts:
        ids = tok.encode(text).ids
        sys.stdout.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
