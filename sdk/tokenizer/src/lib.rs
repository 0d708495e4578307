//! A small, dependency-light BERT *uncased* WordPiece tokenizer.
//!
//! It reproduces the HuggingFace `tokenizers` pipeline that sentence-transformers uses for
//! models such as all-MiniLM-L6-v2 (`BertNormalizer` with `lowercase = true`,
//! `strip_accents = None`, `handle_chinese_chars = true`; `BertPreTokenizer`; `WordPiece` with
//! the `##` prefix; `[CLS] … [SEP]` post-processing; longest-first truncation), id for id.
//!
//! It is pure Rust with no threads, I/O or C code, so it runs inside `wasm32-wasip2` components
//! as well as natively.
//!
//! ```
//! # fn main() -> Result<(), mesh_tokenizer::VocabError> {
//! let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s\n!\n";
//! let tokenizer = mesh_tokenizer::Tokenizer::from_vocab_text(vocab)?;
//! assert_eq!(tokenizer.encode("Hellos!"), vec![2, 4, 5, 6, 3]);
//! # Ok(())
//! # }
//! ```

pub mod bpe;
mod normalize;
mod table;
mod vocab;

pub use bpe::{BpeError, BpeTokenizer, Utf8Stream};
pub use vocab::{Vocab, VocabError};

/// Default upper bound on the number of ids [`Tokenizer::encode`] returns, `[CLS]` and `[SEP]`
/// included (all-MiniLM-L6-v2's `max_seq_length`).
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Words longer than this many characters (after normalisation) become a single `[UNK]`.
pub const MAX_INPUT_CHARS_PER_WORD: usize = 100;

/// A BERT uncased WordPiece tokenizer: normalisation, pre-tokenisation, WordPiece and
/// `[CLS]`/`[SEP]` framing with truncation.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vocab,
    max_tokens: usize,
}

impl Tokenizer {
    /// Creates a tokenizer that truncates to [`DEFAULT_MAX_TOKENS`].
    pub fn new(vocab: Vocab) -> Self {
        Self {
            vocab,
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    /// Parses a `vocab.txt` (see [`Vocab::from_text`]) and creates a tokenizer with the
    /// default truncation length.
    pub fn from_vocab_text(text: &str) -> Result<Self, VocabError> {
        Vocab::from_text(text).map(Self::new)
    }

    /// Sets the maximum number of ids per encoding, `[CLS]` and `[SEP]` included.
    ///
    /// Values below 2 are raised to 2 (an encoding always holds `[CLS]` and `[SEP]`).
    #[must_use]
    pub fn with_max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens.max(2);
        self
    }

    /// The maximum number of ids per encoding, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The vocabulary this tokenizer maps tokens with.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Tokenizes `text` into ids: `[CLS]`, at most `max_tokens - 2` WordPiece ids, `[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids);
        ids
    }

    /// Like [`Tokenizer::encode`] but writes into `ids` (cleared first), so a caller encoding
    /// many texts can reuse one buffer.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        ids.clear();
        ids.reserve(self.max_tokens.min(text.len() + 2));
        ids.push(self.vocab.cls_id());
        // The body may hold `max_tokens - 2` ids; stop normalising once it is full.
        let limit = self.max_tokens - 1;
        let mut words = normalize::Words::new(&self.vocab, ids, limit);

        // Special tokens written literally in the input (`[SEP]`, `[MASK]`, ...) are matched on
        // the raw text, case-sensitively, before any normalisation — as `tokenizers` does for
        // its added tokens.
        let mut rest = text;
        while !words.is_full() {
            match self.vocab.find_special(rest) {
                Some((start, len, id)) => {
                    normalize::feed(&mut words, &rest[..start]);
                    words.push_id(id);
                    rest = &rest[start + len..];
                }
                None => {
                    normalize::feed(&mut words, rest);
                    break;
                }
            }
        }
        words.finish();

        ids.truncate(limit);
        ids.push(self.vocab.sep_id());
    }
}
