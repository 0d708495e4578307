//! A byte-level BPE tokenizer (GPT-2's scheme), with the pre-tokenisation SmolLM2 uses
//! (llama.cpp's `smollm`; `tokenizers`' `Digits(individual_digits)` then `ByteLevel`).
//!
//! Encoding: every digit is split off on its own; the rest is cut by GPT-2's pattern
//! (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, written out
//! by hand below); each piece's UTF-8 bytes become GPT-2's printable stand-ins, and the
//! lowest-ranked adjacent pair is merged until no merge applies. Special tokens
//! (`<|im_start|>`, …) are recognised only where asked ([`BpeTokenizer::encode_special`]):
//! text from people is always plain text, so nobody can forge a turn of the conversation.
//!
//! Decoding maps tokens back to bytes; [`Utf8Stream`] turns a stream of tokens into text
//! without splitting a character that spans two tokens.

use std::collections::{BinaryHeap, HashMap};
use unicode_categories::UnicodeCategories;

/// Why a tokenizer file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BpeError {
    /// The file is not in the expected format.
    #[error("tokenizer file, line {line}: {problem}")]
    Format {
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// GPT-2's map from bytes to printable characters, and back.
fn byte_chars() -> ([char; 256], HashMap<char, u8>) {
    let mut chars = ['\0'; 256];
    let mut back = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("a valid char")
        };
        chars[usize::from(b)] = c;
        back.insert(c, b);
    }
    (chars, back)
}

/// The lines of a tokenizer file, numbered from 1.
struct Lines<'a>(std::iter::Enumerate<std::str::Split<'a, char>>);

impl<'a> Lines<'a> {
    fn next(&mut self, what: &str) -> Result<(usize, &'a str), BpeError> {
        self.0
            .next()
            .map(|(i, l)| (i + 1, l))
            .ok_or_else(|| BpeError::Format {
                line: 0,
                problem: format!("ends before {what}"),
            })
    }

    /// A `<what> <count>` line.
    fn count(&mut self, what: &str) -> Result<usize, BpeError> {
        let (line, text) = self.next(what)?;
        text.strip_prefix(what)
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| BpeError::Format {
                line,
                problem: format!("expected \"{what} <count>\", found {text:?}"),
            })
    }
}

/// A byte-level BPE vocabulary and its merges.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    /// Token strings, by id.
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// `(left, right)` → `(rank, merged)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The token of each byte (a few control bytes have none: they are dropped, as
    /// `tokenizers` drops what its vocabulary cannot spell).
    byte_tokens: [Option<u32>; 256],
    /// Bytes of each token's stand-in characters.
    char_bytes: HashMap<char, u8>,
    /// Special tokens, longest first.
    specials: Vec<(String, u32)>,
}

impl BpeTokenizer {
    /// Read a tokenizer file: `mesh-bpe 1`, `tokens <n>`, n token strings (one a line, in
    /// id order), `merges <m>`, m merges (`left right`, by rank), `specials <k>`, k ids.
    pub fn from_text(text: &str) -> Result<BpeTokenizer, BpeError> {
        let mut lines = Lines(text.split('\n').enumerate());
        let bad = |line: usize, problem: String| BpeError::Format { line, problem };
        let (line, header) = lines.next("the header")?;
        if header != "mesh-bpe 1" {
            return Err(bad(line, format!("header {header:?}, not \"mesh-bpe 1\"")));
        }
        let n = lines.count("tokens")?;
        let mut tokens = Vec::with_capacity(n.min(1 << 20));
        let mut ids = HashMap::with_capacity(n.min(1 << 20));
        for id in 0..n {
            let (line, token) = lines.next("a token")?;
            if ids.insert(token.to_string(), id as u32).is_some() {
                return Err(bad(line, format!("token {token:?} twice")));
            }
            tokens.push(token.to_string());
        }
        let m = lines.count("merges")?;
        let mut merges = HashMap::with_capacity(m.min(1 << 20));
        for rank in 0..m {
            let (line, merge) = lines.next("a merge")?;
            let (left, right) = merge
                .split_once(' ')
                .ok_or_else(|| bad(line, format!("merge {merge:?} is not \"left right\"")))?;
            let id = |t: &str| {
                ids.get(t)
                    .copied()
                    .ok_or_else(|| bad(line, format!("merge {merge:?}: {t:?} is not a token")))
            };
            let merged = id(&format!("{left}{right}"))?;
            merges
                .entry((id(left)?, id(right)?))
                .or_insert((rank as u32, merged));
        }
        let k = lines.count("specials")?;
        let mut specials = Vec::with_capacity(k.min(1024));
        for _ in 0..k {
            let (line, text) = lines.next("a special token")?;
            let id: u32 = text
                .trim()
                .parse()
                .ok()
                .filter(|&id| (id as usize) < tokens.len())
                .ok_or_else(|| bad(line, format!("special token id {text:?}")))?;
            specials.push((tokens[id as usize].clone(), id));
        }
        specials.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let (chars, char_bytes) = byte_chars();
        let mut byte_tokens = [None; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_tokens[b] = ids.get(&c.to_string()).copied();
        }
        if byte_tokens.iter().filter(|t| t.is_some()).count() < 128 {
            return Err(bad(
                0,
                "most bytes have no token: not a byte-level vocabulary".into(),
            ));
        }
        Ok(BpeTokenizer {
            tokens,
            ids,
            merges,
            byte_tokens,
            char_bytes,
            specials,
        })
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token string (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Whether `id` is a special token.
    pub fn is_special(&self, id: u32) -> bool {
        self.specials.iter().any(|&(_, s)| s == id)
    }

    /// Encode `text` as plain text: special tokens' spellings are ordinary characters here.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_plain(text, &mut out);
        out
    }

    /// Encode `text`, reading the special tokens' spellings in it as those tokens (for
    /// templates the workload writes itself, never for text from people).
    pub fn encode_special(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        'outer: while !rest.is_empty() {
            for (at, _) in rest.char_indices() {
                if let Some((special, id)) = self
                    .specials
                    .iter()
                    .find(|(s, _)| rest[at..].starts_with(s.as_str()))
                {
                    self.encode_plain(&rest[..at], &mut out);
                    out.push(*id);
                    rest = &rest[at + special.len()..];
                    continue 'outer;
                }
            }
            self.encode_plain(rest, &mut out);
            break;
        }
        out
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        for piece in pieces(text) {
            self.merge_piece(piece.as_bytes(), out);
        }
    }

    /// BPE over one piece: merge the lowest-ranked adjacent pair until none applies.
    fn merge_piece(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut symbols: Vec<u32> = bytes
            .iter()
            .filter_map(|&b| self.byte_tokens[usize::from(b)])
            .collect();
        if symbols.len() < 2 {
            out.extend(symbols);
            return;
        }
        // A linked list over the symbols, and a heap of candidate merges (rank, left index),
        // lowest rank (then leftmost) first; stale entries are skipped when popped.
        let n = symbols.len();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<std::cmp::Reverse<(u32, usize, u32, u32)>>,
                    symbols: &[u32],
                    i: usize,
                    j: usize| {
            if let Some(&(rank, _)) = self.merges.get(&(symbols[i], symbols[j])) {
                heap.push(std::cmp::Reverse((rank, i, symbols[i], symbols[j])));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &symbols, i, i + 1);
        }
        while let Some(std::cmp::Reverse((_, i, left, right))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j >= n || symbols[i] != left || symbols[j] != right {
                continue;
            }
            let (_, merged) = self.merges[&(left, right)];
            symbols[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            if prev[i] < n {
                push(&mut heap, &symbols, prev[i], i);
            }
            if next[i] < n {
                push(&mut heap, &symbols, i, next[i]);
            }
        }
        let mut i = 0;
        while i < n {
            out.push(symbols[i]);
            i = next[i];
        }
    }

    /// The bytes `id` stands for (a special token's spelling for a special token); none for
    /// an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let token = self.tokens.get(id as usize)?;
        if self.is_special(id) {
            return Some(token.as_bytes().to_vec());
        }
        Some(
            token
                .chars()
                .map(|c| self.char_bytes.get(&c).copied().unwrap_or(b'?'))
                .collect(),
        )
    }

    /// Decode `ids` to text (invalid UTF-8, as from a sequence cut inside a character, is
    /// replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| self.token_bytes(id))
            .flatten()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Text from a stream of token bytes, a whole character at a time.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Add a token's bytes; return the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Bytes that can never become a character: replace them, keep going.
            Err(_) => self.pending.len(),
        };
        let text = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        text
    }

    /// What is left at the end (an unfinished character, replaced).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

fn is_letter(c: char) -> bool {
    c.is_letter()
}

fn is_number(c: char) -> bool {
    c.is_number()
}

/// The pre-tokenised pieces of `text`: digits one by one, the rest by GPT-2's pattern.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if is_number(c) {
            if start < at {
                gpt2_pieces(&text[start..at], &mut out);
            }
            out.push(&text[at..at + c.len_utf8()]);
            start = at + c.len_utf8();
        }
    }
    if start < text.len() {
        gpt2_pieces(&text[start..], &mut out);
    }
    out
}

/// GPT-2's pattern, alternative by alternative, as a regex engine would try them.
fn gpt2_pieces<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end = text.len();
    let offset = |i: usize| chars.get(i).map_or(end, |&(o, _)| o);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let at = |k: usize| chars.get(k).map(|&(_, c)| c);
        let run = |from: usize, pred: &dyn Fn(char) -> bool| {
            let mut k = from;
            while at(k).is_some_and(pred) {
                k += 1;
            }
            k
        };
        let mut matched = None;
        // 's 't 're 've 'm 'll 'd
        if c == '\'' {
            let two: String = chars[i + 1..].iter().take(2).map(|&(_, c)| c).collect();
            if two.starts_with("re") || two.starts_with("ve") || two.starts_with("ll") {
                matched = Some(i + 3);
            } else if matches!(at(i + 1), Some('s' | 't' | 'm' | 'd')) {
                matched = Some(i + 2);
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        if matched.is_none() {
            let body = if c == ' ' { i + 1 } else { i };
            let classes: [&dyn Fn(char) -> bool; 3] = [&is_letter, &is_number, &|c: char| {
                !c.is_whitespace() && !is_letter(c) && !is_number(c)
            }];
            for class in classes {
                if at(body).is_some_and(class) {
                    matched = Some(run(body, class));
                    break;
                }
            }
        }
        // `\s+(?!\S)`, then `\s+`
        if matched.is_none() && c.is_whitespace() {
            let k = run(i, &|c: char| c.is_whitespace());
            matched = Some(if k == chars.len() || k - i == 1 {
                k
            } else {
                k - 1
            });
        }
        let k = matched.unwrap_or(i + 1);
        out.push(&text[offset(i)..offset(k)]);
        i = k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_the_pattern() {
        fn cut(s: &str) -> Vec<&str> {
            pieces(s)
        }
        assert_eq!(cut("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(cut("  42 items"), ["  ", "4", "2", " items"]);
        assert_eq!(
            cut("it's we're I'M"),
            ["it", "'s", " we", "'re", " I", "'", "M"]
        );
        assert_eq!(cut("a  b\n\nc  "), ["a", " ", " b", "\n", "\n", "c", "  "]);
        assert_eq!(cut("x\t\ty"), ["x", "\t", "\t", "y"]);
        assert_eq!(cut("日本語"), ["日本語"]);
        assert_eq!(cut("fn(){}"), ["fn", "(){}"]);
    }

    #[test]
    fn utf8_streams_never_split_a_character() {
        let mut s = Utf8Stream::default();
        let e_acute = "é".as_bytes();
        assert_eq!(s.push(&e_acute[..1]), "");
        assert_eq!(s.push(&e_acute[1..]), "é");
        assert_eq!(s.push(&[0xF0, 0x9F]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
        assert_eq!(s.push(b"ok"), "ok");
    }
}
