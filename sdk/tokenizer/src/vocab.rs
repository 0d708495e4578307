//! The WordPiece vocabulary and the greedy longest-match-first lookup.

use crate::MAX_INPUT_CHARS_PER_WORD;
use crate::table::TokenTable;

/// Prefix that marks a vocabulary entry as the continuation of a word.
const CONTINUATION_PREFIX: &str = "##";

/// Tokens that are matched literally in raw input (before normalisation), like the added
/// special tokens of a HuggingFace BERT tokenizer.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Why a `vocab.txt` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VocabError {
    /// A special token the tokenizer relies on has no line in the vocabulary.
    #[error("vocabulary has no {0} token")]
    MissingSpecialToken(&'static str),
    /// The vocabulary text is 4 GiB or larger.
    #[error("vocabulary text is too large")]
    TooLarge,
}

/// A BERT WordPiece vocabulary: token → id, where the id is the token's 0-based line number in
/// `vocab.txt`.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// The `vocab.txt` text; both tables index into it.
    text: Box<str>,
    /// Every token, spelled as in the file; looked up for the first piece of a word.
    tokens: TokenTable,
    /// Tokens starting with `##`, keyed without the prefix; looked up for later pieces.
    continuations: TokenTable,
    /// Special tokens present in the vocabulary, longest first.
    specials: Vec<(&'static str, u32)>,
    len: usize,
    cls: u32,
    sep: u32,
    unk: u32,
    pad: u32,
}

impl Vocab {
    /// Parses the text of a `vocab.txt`: one token per line (`\n` or `\r\n`), id = line number.
    ///
    /// If a token occurs twice, its later line wins (as in HuggingFace). The vocabulary must
    /// contain `[CLS]`, `[SEP]`, `[UNK]` and `[PAD]`.
    pub fn from_text(text: &str) -> Result<Self, VocabError> {
        if u32::try_from(text.len()).map_or(true, |len| len == u32::MAX) {
            return Err(VocabError::TooLarge);
        }
        let mut tokens = Vec::new();
        let mut continuations = Vec::new();
        let mut start = 0;
        // Same lines as `str::lines`; offsets fit in u32 as the text is shorter than u32::MAX.
        for (id, raw) in (0u32..).zip(text.split_inclusive('\n')) {
            let line = raw
                .strip_suffix('\n')
                .map_or(raw, |line| line.strip_suffix('\r').unwrap_or(line));
            let end = start + line.len() as u32;
            tokens.push((start, end, id));
            if line.starts_with(CONTINUATION_PREFIX) {
                continuations.push((start + CONTINUATION_PREFIX.len() as u32, end, id));
            }
            start += raw.len() as u32;
        }
        let tokens_table = TokenTable::new(text, &tokens);
        let continuations = TokenTable::new(text, &continuations);

        let required = |name: &'static str| {
            tokens_table
                .get(text, name)
                .ok_or(VocabError::MissingSpecialToken(name))
        };
        let (cls, sep, unk, pad) = (
            required("[CLS]")?,
            required("[SEP]")?,
            required("[UNK]")?,
            required("[PAD]")?,
        );
        let mut specials: Vec<_> = SPECIAL_TOKENS
            .iter()
            .filter_map(|&name| tokens_table.get(text, name).map(|id| (name, id)))
            .collect();
        specials.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));

        Ok(Self {
            text: text.into(),
            tokens: tokens_table,
            continuations,
            specials,
            len: tokens.len(),
            cls,
            sep,
            unk,
            pad,
        })
    }

    /// Number of lines (ids) in the vocabulary.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vocabulary has no lines (never true for a successfully parsed one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The id of `token` spelled exactly as in `vocab.txt` (continuations with their `##`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokens.get(&self.text, token)
    }

    /// Id of `[CLS]`, which starts every encoding.
    pub fn cls_id(&self) -> u32 {
        self.cls
    }

    /// Id of `[SEP]`, which ends every encoding.
    pub fn sep_id(&self) -> u32 {
        self.sep
    }

    /// Id of `[UNK]`, which stands for a word that cannot be split into vocabulary pieces.
    pub fn unk_id(&self) -> u32 {
        self.unk
    }

    /// Id of `[PAD]`, for callers that pad batches (the tokenizer itself never pads).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The leftmost special token written literally in `text`: (byte offset, byte length, id).
    pub(crate) fn find_special(&self, text: &str) -> Option<(usize, usize, u32)> {
        let mut from = 0;
        while let Some(offset) = text[from..].find('[') {
            let at = from + offset;
            let tail = &text[at..];
            if let Some(&(name, id)) = self
                .specials
                .iter()
                .find(|(name, _)| tail.starts_with(name))
            {
                return Some((at, name.len(), id));
            }
            from = at + 1;
        }
        None
    }

    /// Appends the WordPiece ids of one normalised, non-empty `word`: greedy longest match
    /// first, `##` pieces after the first; a word with an unmatchable rest, or longer than
    /// [`MAX_INPUT_CHARS_PER_WORD`] characters, becomes a single `[UNK]`.
    pub(crate) fn push_wordpieces(&self, word: &str, ids: &mut Vec<u32>) {
        if word.len() > MAX_INPUT_CHARS_PER_WORD && word.chars().count() > MAX_INPUT_CHARS_PER_WORD
        {
            ids.push(self.unk);
            return;
        }
        let first_piece = ids.len();
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 {
                &self.tokens
            } else {
                &self.continuations
            };
            // Longer candidates cannot match: start with the longest that could.
            let mut end = word.floor_char_boundary(word.len().min(start + table.max_key_len()));
            loop {
                if end <= start {
                    ids.truncate(first_piece);
                    ids.push(self.unk);
                    return;
                }
                if let Some(id) = table.get(&self.text, &word[start..end]) {
                    ids.push(id);
                    start = end;
                    break;
                }
                end = word.floor_char_boundary(end - 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(lines: &[&str]) -> Vocab {
        let mut text = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n".to_owned();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        Vocab::from_text(&text).expect("valid vocabulary")
    }

    fn pieces(vocab: &Vocab, word: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        vocab.push_wordpieces(word, &mut ids);
        ids
    }

    #[test]
    fn ids_are_line_numbers_and_crlf_is_accepted() {
        let v = Vocab::from_text("[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nx\r\n").unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(
            (v.pad_id(), v.unk_id(), v.cls_id(), v.sep_id()),
            (0, 1, 2, 3)
        );
        assert_eq!(v.token_to_id("x"), Some(4));
    }

    #[test]
    fn missing_special_token_is_an_error() {
        let err = Vocab::from_text("[PAD]\n[UNK]\n[SEP]\n").unwrap_err();
        assert_eq!(err, VocabError::MissingSpecialToken("[CLS]"));
        assert_eq!(err.to_string(), "vocabulary has no [CLS] token");
    }

    #[test]
    fn greedy_longest_match_first() {
        let v = vocab(&["un", "unaff", "##aff", "##able", "##a", "##ffable"]);
        // "unaff" is longer than "un", then "##able".
        assert_eq!(pieces(&v, "unaffable"), vec![5, 7]);
        // No piece for "x": the whole word is [UNK], earlier pieces discarded.
        assert_eq!(pieces(&v, "unx"), vec![1]);
    }

    #[test]
    fn multibyte_pieces() {
        let v = vocab(&["é", "##é", "日"]);
        assert_eq!(pieces(&v, "ééé"), vec![4, 5, 5]);
        assert_eq!(pieces(&v, "日"), vec![6]);
    }

    #[test]
    fn word_length_limit_counts_chars() {
        let v = vocab(&["é", "##é"]);
        assert_eq!(pieces(&v, &"é".repeat(100)).len(), 100);
        assert_eq!(pieces(&v, &"é".repeat(101)), vec![1]);
    }

    #[test]
    fn finds_leftmost_special() {
        let v = vocab(&["[MASK]"]);
        assert_eq!(v.find_special("a [b [MASK] [SEP]"), Some((5, 6, 4)));
        assert_eq!(v.find_special("[sep] [MAS"), None);
    }
}
