//! `BertNormalizer` + `BertPreTokenizer` as one streaming pass that hands finished words to
//! WordPiece.
//!
//! The HuggingFace steps, in order, are: drop NUL, U+FFFD and "other" characters (Cc, Cf, Co;
//! tab, newline and carriage return count as whitespace instead); turn whitespace into spaces;
//! put spaces around CJK ideographs; NFD and drop nonspacing marks (Mn); lowercase; split on
//! whitespace; isolate punctuation. ASCII characters take a direct path; runs of other
//! characters are buffered and decomposed together, since NFD reorders combining marks
//! (only ever between two starters, so cutting the runs at ASCII, whitespace and CJK
//! characters gives the same result as decomposing the whole text).
//!
//! Character classes use `unicode_categories`, the very tables (Unicode 8) that `tokenizers`
//! uses, so characters assigned since then are treated exactly as HuggingFace treats them.

use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

use crate::Vocab;

/// Collects normalised characters into words and appends their WordPiece ids.
pub(crate) struct Words<'a> {
    vocab: &'a Vocab,
    ids: &'a mut Vec<u32>,
    /// Once `ids` holds this many ids, everything further would be truncated away.
    limit: usize,
    /// The word being built, already normalised.
    word: String,
    /// Non-ASCII characters that survived cleaning, not yet decomposed.
    pending: String,
}

impl<'a> Words<'a> {
    pub(crate) fn new(vocab: &'a Vocab, ids: &'a mut Vec<u32>, limit: usize) -> Self {
        Self {
            vocab,
            ids,
            limit,
            word: String::with_capacity(32),
            pending: String::new(),
        }
    }

    /// Whether further input can no longer change the (truncated) result.
    pub(crate) fn is_full(&self) -> bool {
        self.ids.len() >= self.limit
    }

    /// Ends the current word and appends `id` as a token of its own.
    pub(crate) fn push_id(&mut self, id: u32) {
        self.finish();
        self.ids.push(id);
    }

    /// Tokenizes whatever is still buffered.
    pub(crate) fn finish(&mut self) {
        self.flush_pending();
        self.end_word();
    }

    fn end_word(&mut self) {
        if !self.word.is_empty() {
            self.vocab.push_wordpieces(&self.word, self.ids);
            self.word.clear();
        }
    }

    /// Emits `c` (punctuation or a CJK ideograph) as a word of its own.
    fn push_single(&mut self, c: char) {
        self.end_word();
        let mut buf = [0; 4];
        self.vocab
            .push_wordpieces(c.encode_utf8(&mut buf), self.ids);
    }

    /// Decomposes the pending run, drops nonspacing marks, lowercases and splits.
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        for decomposed in pending.nfd().filter(|&c| !c.is_mark_nonspacing()) {
            for c in decomposed.to_lowercase() {
                if is_bert_punctuation(c) {
                    self.push_single(c);
                } else if c.is_whitespace() {
                    self.end_word();
                } else {
                    self.word.push(c);
                }
            }
        }
        pending.clear();
        self.pending = pending;
    }
}

/// Normalises and pre-tokenizes `text`, handing each word to WordPiece; stops early once the
/// result is full.
pub(crate) fn feed(words: &mut Words<'_>, text: &str) {
    for c in text.chars() {
        if words.is_full() {
            return;
        }
        if c.is_ascii() {
            // ASCII is unaffected by NFD and ends any run of combining marks.
            words.flush_pending();
            match c {
                ' ' | '\t' | '\n' | '\r' => words.end_word(),
                _ if c.is_ascii_control() => {}
                _ if c.is_ascii_punctuation() => words.push_single(c),
                _ => words.word.push(c.to_ascii_lowercase()),
            }
        } else if c == char::REPLACEMENT_CHARACTER || c.is_other() {
            // Dropped before anything else, so e.g. U+0085 (a control that is also
            // whitespace) vanishes rather than splitting words.
        } else if c.is_whitespace() {
            words.flush_pending();
            words.end_word();
        } else if is_cjk_ideograph(c) {
            // A word of its own; NFD still applies (compatibility ideographs decompose).
            words.flush_pending();
            words.end_word();
            words.pending.push(c);
            words.flush_pending();
            words.end_word();
        } else {
            words.pending.push(c);
        }
    }
}

/// `BertPreTokenizer`'s punctuation: all ASCII punctuation (which includes symbols such as
/// `$`, `+`, `^`, `|`) plus Unicode categories Pc, Pd, Ps, Pe, Pi, Pf and Po.
fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK ideograph ranges of `tokenizers`' `BertNormalizer`.
///
/// Note `0x2B920`: Python's `BasicTokenizer` starts this range at `0x2B820`, `tokenizers` at
/// `0x2B920`, so U+2B820..=U+2B91F are not split off here either.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}
