//! The CLIP byte-level BPE tokenizer of Stable Diffusion 1.x / 2.x, id for id equal to
//! Hugging Face transformers 5's `CLIPTokenizer` (which is backed by the `tokenizers` library).
//!
//! The pipeline is the one transformers builds for CLIP, whatever files it is read from:
//!
//! - normalizer: NFC, then every run of whitespace (`\s+`) becomes one space, then lowercase;
//! - pre-tokenizer: keep the matches of
//!   `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!   (so whitespace is dropped), then byte-level (GPT-2 split regex, no prefix space);
//! - model: BPE with `</w>` appended to the last piece of every word, unknown token = `unk_token`;
//! - added tokens (the special tokens, textual-inversion tokens) are cut out of the text before
//!   the pipeline runs, exactly with the flags transformers ends up giving them (see
//!   [`ClipTokenizer::from_dir`]).
//!
//! [`ClipTokenizer::encode`] is what diffusers feeds the text encoder:
//! `tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)`,
//! i.e. `bos`, the prompt's tokens cut to `max_len - 2`, `eos`, then `pad` up to `max_len`.
use crate::{Result, SdError};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// The split regex of transformers' `CLIPTokenizer` pre-tokenizer (its matches are kept).
pub const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Suffix the BPE model appends to the last piece of a word.
pub const END_OF_WORD_SUFFIX: &str = "</w>";
/// The begin-of-text token of CLIP.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// The end-of-text token of CLIP (also the unknown token, and SD 1.x's padding).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// The text encoder's number of positions, used when a folder does not say.
pub const DEFAULT_MAX_LEN: usize = 77;
/// transformers writes this (`int(1e30)`) as `model_max_length` when a tokenizer has no limit.
const VERY_LARGE_MAX_LEN: f64 = 1e29;

/// A CLIP tokenizer that gives the same ids as transformers' `CLIPTokenizer`.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: String,
    bos_id: u32,
    eos: String,
    eos_id: u32,
    pad: String,
    pad_id: u32,
    max_len: usize,
    vocab_size: usize,
    source: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &(&self.bos, self.bos_id))
            .field("eos", &(&self.eos, self.eos_id))
            .field("pad", &(&self.pad, self.pad_id))
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// An added token as transformers / tokenizers describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TokenSpec {
    content: String,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

impl TokenSpec {
    /// What transformers makes of a plain string naming a special token.
    fn special_str(content: &str) -> Self {
        TokenSpec {
            content: content.to_string(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
            special: true,
        }
    }

    fn to_added(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .single_word(self.single_word)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .normalized(self.normalized)
    }
}

/// A special-token setting: transformers keeps plain strings and `AddedToken`s apart until it
/// adds them, and compares them differently, so we do too.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TokenValue {
    Str(String),
    Tok(TokenSpec),
}

impl TokenValue {
    fn content(&self) -> &str {
        match self {
            TokenValue::Str(s) => s,
            TokenValue::Tok(t) => &t.content,
        }
    }
}

/// The named special tokens, in transformers' `SPECIAL_TOKENS_ATTRIBUTES` order.
const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];
const BOS: usize = 0;
const EOS: usize = 1;
const UNK: usize = 2;
const PAD: usize = 4;

/// What the json files of a tokenizer folder say, once merged the way transformers merges them.
struct Settings {
    /// value and the file that set it
    named: [Option<(TokenValue, PathBuf)>; 7],
    extras: Vec<TokenValue>,
    /// `added_tokens_decoder`: id -> token, in id order
    added: BTreeMap<u32, TokenSpec>,
    max_len: usize,
}

impl Settings {
    fn sd1_defaults() -> Self {
        Settings {
            named: Default::default(),
            extras: Vec::new(),
            added: BTreeMap::new(),
            max_len: DEFAULT_MAX_LEN,
        }
    }
}

struct Vocabulary {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    /// the file the vocabulary came from, for error messages
    path: PathBuf,
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` folder as transformers 5's `CLIPTokenizer.from_pretrained`
    /// does.
    ///
    /// - The vocabulary and merges come from `tokenizer.json` when present (its `model`, which must
    ///   be BPE), else from `vocab.json` + `merges.txt`. Like transformers, the normalizer,
    ///   pre-tokenizer, post-processor and decoder of a `tokenizer.json` are ignored: CLIP's own
    ///   pipeline is always used.
    /// - `tokenizer_config.json` (optional) gives `model_max_length` (default 77; transformers'
    ///   "no limit" value also gives 77) and the special tokens (`bos_token`, `eos_token`,
    ///   `unk_token`, `pad_token`: a string or an object with a `content` field; defaults are
    ///   CLIP's, i.e. SD 1.x: pad = `<|endoftext|>`). SD 2.x pads with `!`.
    /// - When `tokenizer_config.json` has an `added_tokens_decoder`, that is the list of added
    ///   tokens; otherwise `special_tokens_map.json` overrides the special tokens of the config, and
    ///   the added tokens are those of `added_tokens.json` and of `tokenizer.json`'s `added_tokens`.
    ///
    /// The special tokens then become added tokens with the flags transformers gives them (which
    /// matters: e.g. SD 2.x's `!` pad token is cut out of prompts as a token of its own, and a
    /// `normalized` `<|startoftext|>` also matches `<|STARTOFTEXT|>`).
    ///
    /// Errors: a missing or unreadable file ([`SdError::Io`]), a file that is not the JSON
    /// expected or a special token that is not in the vocabulary ([`SdError::Config`], naming the
    /// file), a vocabulary / merges pair the BPE model refuses ([`SdError::Tokenizer`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(SdError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a directory (expected a diffusers tokenizer/ folder)",
                ),
            ));
        }
        let tokenizer_json = dir.join("tokenizer.json");
        let (vocabulary, json_added) = if tokenizer_json.is_file() {
            let root = read_json_object(&tokenizer_json)?;
            let vocabulary = vocabulary_from_tokenizer_json(&root, &tokenizer_json)?;
            let added = parse_tokenizer_json_added(&root, &tokenizer_json)?;
            (vocabulary, added)
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            (read_vocab_merges(&vocab_path, &merges_path)?, Vec::new())
        };
        let settings = read_settings(dir, &json_added)?;
        Self::build(vocabulary, settings, dir.to_path_buf())
    }

    /// Loads a bare `vocab.json` + `merges.txt` pair with SD 1.x's settings: `<|startoftext|>` /
    /// `<|endoftext|>` as bos / eos, padding with `<|endoftext|>`, 77 positions. This is how the
    /// tokenizer shipped in `data/clip-tokenizer` is read.
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let vocabulary = read_vocab_merges(vocab, merges)?;
        Self::build(vocabulary, Settings::sd1_defaults(), vocab.to_path_buf())
    }

    /// A bare `vocab.json` + `merges.txt` pair with the special tokens and length of the
    /// `tokenizer_config.json` at `config` (e.g. SD 2.x's, which pads with `!`), read as
    /// [`Self::from_dir`] reads a folder's.
    pub fn from_files_with_config(vocab: &Path, merges: &Path, config: &Path) -> Result<Self> {
        let vocabulary = read_vocab_merges(vocab, merges)?;
        let dir = config.parent().unwrap_or(Path::new("."));
        if config.file_name() != Some(std::ffi::OsStr::new("tokenizer_config.json")) {
            return Err(SdError::config(
                config,
                "expected a file named tokenizer_config.json",
            ));
        }
        let settings = read_settings(dir, &[])?;
        Self::build(vocabulary, settings, config.to_path_buf())
    }

    fn build(vocabulary: Vocabulary, settings: Settings, source: PathBuf) -> Result<Self> {
        let Settings {
            named,
            extras,
            added,
            max_len,
        } = settings;
        if max_len < 2 {
            return Err(SdError::config(
                &source,
                format!("model_max_length {max_len} leaves no room for the bos and eos tokens"),
            ));
        }

        // CLIPTokenizer's defaults for the four tokens it names (a default missing from the
        // vocabulary is the vocabulary's fault, so it is named in the error).
        let mut named: [Option<(TokenValue, PathBuf)>; 7] = named;
        for (slot, default) in [
            (BOS, BOS_TOKEN),
            (EOS, EOS_TOKEN),
            (UNK, EOS_TOKEN),
            (PAD, EOS_TOKEN),
        ] {
            if named[slot].is_none() {
                named[slot] = Some((
                    TokenValue::Str(default.to_string()),
                    vocabulary.path.clone(),
                ));
            }
        }

        // Special tokens must name existing ids: transformers would append an unknown one as a
        // new token, which the text encoder has no embedding for.
        let added_contents: HashSet<&str> = added.values().map(|t| t.content.as_str()).collect();
        for (slot, value) in named.iter().enumerate() {
            if let Some((value, from)) = value {
                let c = value.content();
                if !vocabulary.vocab.contains_key(c) && !added_contents.contains(c) {
                    return Err(SdError::config(
                        from,
                        format!(
                            "{} `{c}` is not in the vocabulary ({}, {} entries)",
                            NAMED[slot],
                            vocabulary.path.display(),
                            vocabulary.vocab.len()
                        ),
                    ));
                }
            }
        }

        let unk = named[UNK].as_ref().map(|(v, _)| v.content().to_string());
        let vocab_len = vocabulary.vocab.len();
        let vocab_path = vocabulary.path.clone();
        let mut builder = BPE::builder()
            .vocab_and_merges(
                vocabulary
                    .vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                vocabulary.merges,
            )
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(END_OF_WORD_SUFFIX.to_string())
            .fuse_unk(false);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(|e| {
            SdError::Tokenizer(format!(
                "{}: cannot build the BPE model ({vocab_len} tokens): {e}",
                vocab_path.display()
            ))
        })?;

        let mut inner = Tokenizer::new(bpe);
        inner.with_normalizer(Some(clip_normalizer()?));
        inner.with_pre_tokenizer(Some(clip_pre_tokenizer()?));
        inner.with_decoder(Some(ByteLevel::default()));

        // The added tokens, in the order and with the flags transformers 5 gives them.
        for spec in transformers_added_tokens(&named, &extras, &added) {
            inner.add_tokens(&[spec.to_added()]);
        }
        for (id, spec) in &added {
            match inner.token_to_id(&spec.content) {
                Some(got) if got == *id => {}
                got => tracing::warn!(
                    "{}: added token `{}` is listed with id {id} but gets id {got:?} (as in transformers)",
                    source.display(),
                    spec.content
                ),
            }
        }

        let content = |slot: usize| named[slot].as_ref().map(|(v, _)| v.content().to_string());
        let (bos, eos, pad) = (
            content(BOS).unwrap_or_default(),
            content(EOS).unwrap_or_default(),
            content(PAD).unwrap_or_default(),
        );
        let id_of = |token: &str, slot: usize| {
            inner.token_to_id(token).ok_or_else(|| {
                SdError::Tokenizer(format!(
                    "{}: {} `{token}` has no id",
                    source.display(),
                    NAMED[slot]
                ))
            })
        };
        let bos_id = id_of(&bos, BOS)?;
        let eos_id = id_of(&eos, EOS)?;
        let pad_id = id_of(&pad, PAD)?;
        inner.with_post_processor(Some(
            RobertaProcessing::new((eos.clone(), eos_id), (bos.clone(), bos_id))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));
        let vocab_size = inner.get_vocab_size(true);
        Ok(ClipTokenizer {
            inner,
            bos,
            bos_id,
            eos,
            eos_id,
            pad,
            pad_id,
            max_len,
            vocab_size,
            source,
        })
    }

    /// The ids diffusers gives the text encoder for `prompt`: bos, the prompt's tokens (cut to
    /// `max_len() - 2`), eos, then pad ids up to `max_len()`.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let tokens = self.tokenize(prompt)?;
        let n = tokens.len().min(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens[..n]);
        ids.push(self.eos_id);
        ids.resize(self.max_len, self.pad_id);
        Ok(ids)
    }

    /// [`encode`](Self::encode) for each prompt.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p)).collect()
    }

    /// The positions in `ids` (an encoded prompt, start token at 0) of every occurrence of
    /// `text`'s tokens, occurrences not overlapping, in order; empty when `text` has no tokens
    /// or does not occur. Occurrences cut off by the length limit do not count.
    pub fn positions_of(&self, ids: &[u32], text: &str) -> Result<Vec<usize>> {
        let needle = self.tokenize(text)?;
        let mut positions = Vec::new();
        if needle.is_empty() {
            return Ok(positions);
        }
        let mut i = 1;
        while i + needle.len() <= ids.len() {
            if ids[i..i + needle.len()] == needle[..] {
                positions.extend(i..i + needle.len());
                i += needle.len();
            } else {
                i += 1;
            }
        }
        Ok(positions)
    }

    /// The ids of `text` without bos / eos, padding or truncation (transformers'
    /// `tokenizer(text, add_special_tokens=False)["input_ids"]`). Special-token strings written in
    /// the text still become their ids.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| SdError::Tokenizer(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The tokens (BPE pieces, byte-level encoded, with `</w>` word ends) of `text`, as
    /// [`tokenize`](Self::tokenize) gives their ids.
    pub fn tokenize_to_strings(&self, text: &str) -> Result<Vec<String>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| SdError::Tokenizer(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(encoding.get_tokens().to_vec())
    }

    /// Text for ids, as transformers' `decode`: byte-level decoding, each `</w>` read as a space,
    /// the ends trimmed; special tokens (bos, eos, pad, ...) left out when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| SdError::Tokenizer(format!("cannot decode {ids:?}: {e}")))?;
        Ok(text.replace(END_OF_WORD_SUFFIX, " ").trim().to_string())
    }

    /// The id of a token string (a vocabulary entry such as `cat</w>`, or an added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whole vocabulary words a prompt can spell (lower-case letters, one token that
    /// [`tokenize`](Self::tokenize) gives back for the word alone), less `exclude`'s tokens, in
    /// id order.
    pub fn whole_words(&self, exclude: &str) -> Result<Vec<String>> {
        let excluded = self.tokenize(exclude)?;
        let mut words = Vec::new();
        for id in 0..self.vocab_size as u32 {
            if excluded.contains(&id) {
                continue;
            }
            let Some(word) = self
                .id_to_token(id)
                .and_then(|t| t.strip_suffix(END_OF_WORD_SUFFIX).map(String::from))
            else {
                continue;
            };
            if word.len() < 2 || !word.bytes().all(|b| b.is_ascii_lowercase()) {
                continue;
            }
            if self.tokenize(&word)? == [id] {
                words.push(word);
            }
        }
        Ok(words)
    }

    /// Number of distinct tokens, added tokens included (transformers' `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_token(&self) -> &str {
        &self.pad
    }

    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    pub fn eos_token(&self) -> &str {
        &self.eos
    }

    /// Length of every [`encode`](Self::encode) output (`model_max_length`).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Adds new tokens (textual inversion), like transformers' `tokenizer.add_tokens(tokens)`:
    /// each gets the next id after the current vocabulary (49408, 49409, ... for CLIP) and is cut
    /// out of any text it appears in, even inside a word, and, being normalized, also when
    /// written in upper case. Returns their ids, in order.
    ///
    /// Errors ([`SdError::Tokenizer`], nothing added): an empty token, a token given twice, or a
    /// token that already has an id (in the vocabulary or added before).
    pub fn add_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        let mut seen = HashSet::new();
        for &t in tokens {
            if t.is_empty() {
                return Err(SdError::Tokenizer("cannot add an empty token".into()));
            }
            if let Some(id) = self.token_id(t) {
                return Err(SdError::Tokenizer(format!(
                    "cannot add token `{t}`: it is already in the vocabulary (id {id})"
                )));
            }
            if !seen.insert(t) {
                return Err(SdError::Tokenizer(format!(
                    "cannot add token `{t}`: given twice"
                )));
            }
        }
        let mut ids = Vec::with_capacity(tokens.len());
        for &t in tokens {
            self.inner.add_tokens(&[AddedToken::from(t, false)]);
            let id = self.token_id(t).ok_or_else(|| {
                SdError::Tokenizer(format!("added token `{t}` did not get an id"))
            })?;
            ids.push(id);
        }
        self.vocab_size = self.inner.get_vocab_size(true);
        Ok(ids)
    }
}

/// NFC, whitespace runs to one space, lowercase.
fn clip_normalizer() -> Result<NormalizerSequence> {
    let replace = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(|e| SdError::Tokenizer(format!("whitespace regex: {e}")))?;
    Ok(NormalizerSequence::new(vec![
        NFC.into(),
        replace.into(),
        Lowercase.into(),
    ]))
}

/// CLIP's split (matches kept), then byte-level without prefix space (with its GPT-2 regex).
fn clip_pre_tokenizer() -> Result<PreTokenizerSequence> {
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| SdError::Tokenizer(format!("split regex: {e}")))?;
    Ok(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ]))
}

/// The tokens transformers 5's `TokenizersBackend.__init__` adds to the backend, deduplicated:
/// first the `added_tokens_decoder` entries in id order, then each named special token and each
/// extra special token that is not already there (a plain string becomes a special,
/// non-normalized token). When one content is added several times, tokenizers >= 0.23 keeps the
/// flags of the last one at the position of the first, which we reproduce here (the `tokenizers`
/// crate we build on keeps the first, so each content is given to it once).
fn transformers_added_tokens(
    named: &[Option<(TokenValue, PathBuf)>; 7],
    extras: &[TokenValue],
    added: &BTreeMap<u32, TokenSpec>,
) -> Vec<TokenSpec> {
    let mut to_add: Vec<TokenValue> = added.values().cloned().map(TokenValue::Tok).collect();
    let encoder: HashSet<String> = to_add.iter().map(|v| v.content().to_string()).collect();
    let candidates = named
        .iter()
        .filter_map(|v| v.as_ref().map(|(v, _)| v.clone()))
        .chain(extras.iter().cloned());
    for value in candidates {
        if !encoder.contains(value.content()) && !to_add.contains(&value) {
            to_add.push(value);
        }
    }
    let named_contents: HashSet<&str> = named
        .iter()
        .filter_map(|v| v.as_ref().map(|(v, _)| v.content()))
        .filter(|c| !c.is_empty())
        .collect();
    let mut out: Vec<TokenSpec> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for value in to_add {
        let spec = match value {
            TokenValue::Str(s) => TokenSpec::special_str(&s),
            TokenValue::Tok(mut t) => {
                if !t.special && named_contents.contains(t.content.as_str()) {
                    t.special = true;
                }
                t
            }
        };
        if spec.content.is_empty() {
            continue;
        }
        match position.get(&spec.content) {
            Some(&i) => out[i] = spec,
            None => {
                position.insert(spec.content.clone(), out.len());
                out.push(spec);
            }
        }
    }
    out
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| SdError::io(path, e))
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = read_text(path)?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(SdError::config(
            path,
            format!("expected a JSON object, found {}", json_kind(&other)),
        )),
        Err(e) => Err(SdError::config(path, format!("invalid JSON: {e}"))),
    }
}

fn read_json_object_opt(path: &Path) -> Result<Option<Map<String, Value>>> {
    if path.is_file() {
        read_json_object(path).map(Some)
    } else {
        Ok(None)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Vocabulary> {
    let vocab_root = read_json_object(vocab_path)?;
    let vocab = parse_vocab(&vocab_root, vocab_path, "")?;
    let text = read_text(merges_path)?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                merges.push((a.to_string(), b.to_string()))
            }
            _ => {
                return Err(SdError::config(
                    merges_path,
                    format!(
                        "line {}: expected a merge `<left> <right>` (two tokens and one space), found {line:?}",
                        i + 1
                    ),
                ))
            }
        }
    }
    check_merges(&vocab, &merges, merges_path)?;
    Ok(Vocabulary {
        vocab,
        merges,
        path: vocab_path.to_path_buf(),
    })
}

fn parse_vocab(map: &Map<String, Value>, path: &Path, field: &str) -> Result<HashMap<String, u32>> {
    let mut vocab = HashMap::with_capacity(map.len());
    for (token, id) in map {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                SdError::config(
                    path,
                    format!("{field}vocabulary entry {token:?}: expected a token id, found {id}"),
                )
            })?;
        vocab.insert(token.clone(), id);
    }
    if vocab.is_empty() {
        return Err(SdError::config(path, format!("{field}vocabulary is empty")));
    }
    Ok(vocab)
}

/// A merge must join two tokens of the vocabulary into a third one; the BPE model would refuse it
/// later with a less helpful message.
fn check_merges(
    vocab: &HashMap<String, u32>,
    merges: &[(String, String)],
    path: &Path,
) -> Result<()> {
    for (i, (a, b)) in merges.iter().enumerate() {
        for piece in [a, b] {
            if !vocab.contains_key(piece) {
                return Err(SdError::config(
                    path,
                    format!(
                        "merge {} (`{a} {b}`): `{piece}` is not in the vocabulary",
                        i + 1
                    ),
                ));
            }
        }
        let joined = format!("{a}{b}");
        if !vocab.contains_key(&joined) {
            return Err(SdError::config(
                path,
                format!(
                    "merge {} (`{a} {b}`): the merged token `{joined}` is not in the vocabulary",
                    i + 1
                ),
            ));
        }
    }
    Ok(())
}

fn vocabulary_from_tokenizer_json(root: &Map<String, Value>, path: &Path) -> Result<Vocabulary> {
    let model = root
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| SdError::config(path, "expected a `model` object"))?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") | None => {}
        Some(other) => {
            return Err(SdError::config(
                path,
                format!("model type is {other}, expected BPE (a CLIP tokenizer)"),
            ))
        }
    }
    let vocab_map = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| SdError::config(path, "expected `model.vocab` to be an object"))?;
    let vocab = parse_vocab(vocab_map, path, "model.")?;
    let merges_json = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| SdError::config(path, "expected `model.merges` to be an array"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for (i, m) in merges_json.iter().enumerate() {
        let pair = match m {
            Value::String(s) => {
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => Some((a.to_string(), b.to_string())),
                    _ => None,
                }
            }
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        let pair = pair.ok_or_else(|| {
            SdError::config(
                path,
                format!(
                    "model.merges[{i}]: expected \"<left> <right>\" or [left, right], found {m}"
                ),
            )
        })?;
        merges.push(pair);
    }
    check_merges(&vocab, &merges, path)?;
    Ok(Vocabulary {
        vocab,
        merges,
        path: path.to_path_buf(),
    })
}

/// Parses an added token object as Python's `AddedToken(**obj)`: missing flags are false, except
/// `normalized` which defaults to `not special`. `special` overrides the object's own flag.
fn parse_token_object(
    obj: &Map<String, Value>,
    special: Option<bool>,
    path: &Path,
    what: &str,
) -> Result<TokenSpec> {
    let content = obj
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| SdError::config(path, format!("{what}: expected a `content` string")))?;
    let flag = |name: &str| -> Result<Option<bool>> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(SdError::config(
                path,
                format!("{what}: `{name}` should be a boolean, found {other}"),
            )),
        }
    };
    let special = match special {
        Some(s) => s,
        None => flag("special")?.unwrap_or(false),
    };
    Ok(TokenSpec {
        content: content.to_string(),
        single_word: flag("single_word")?.unwrap_or(false),
        lstrip: flag("lstrip")?.unwrap_or(false),
        rstrip: flag("rstrip")?.unwrap_or(false),
        normalized: flag("normalized")?.unwrap_or(!special),
        special,
    })
}

/// A special token setting: a string, or an object with a `content` field.
fn parse_token_value(
    v: &Value,
    special: Option<bool>,
    path: &Path,
    what: &str,
) -> Result<Option<TokenValue>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(TokenValue::Str(s.clone()))),
        Value::Object(obj) => Ok(Some(TokenValue::Tok(parse_token_object(
            obj, special, path, what,
        )?))),
        other => Err(SdError::config(
            path,
            format!(
                "{what}: expected a string or an object with a `content` field, found {}",
                json_kind(other)
            ),
        )),
    }
}

fn parse_token_list(
    v: &Value,
    special: Option<bool>,
    path: &Path,
    what: &str,
) -> Result<Vec<TokenValue>> {
    let items: Vec<&Value> = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a.iter().collect(),
        // model-specific named tokens: {"name": token}
        Value::Object(o) => o.values().collect(),
        other => {
            return Err(SdError::config(
                path,
                format!(
                    "{what}: expected a list of tokens, found {}",
                    json_kind(other)
                ),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if let Some(t) = parse_token_value(item, special, path, &format!("{what}[{i}]"))? {
            out.push(t);
        }
    }
    Ok(out)
}

fn parse_tokenizer_json_added(
    root: &Map<String, Value>,
    path: &Path,
) -> Result<Vec<(u32, TokenSpec)>> {
    let mut out = Vec::new();
    let Some(list) = root.get("added_tokens") else {
        return Ok(out);
    };
    let list = list
        .as_array()
        .ok_or_else(|| SdError::config(path, "expected `added_tokens` to be an array"))?;
    for (i, item) in list.iter().enumerate() {
        let what = format!("added_tokens[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| SdError::config(path, format!("{what}: expected an object")))?;
        let id = obj
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| SdError::config(path, format!("{what}: expected an `id`")))?;
        out.push((id, parse_token_object(obj, None, path, &what)?));
    }
    Ok(out)
}

/// Merges `tokenizer_config.json`, `special_tokens_map.json`, `added_tokens.json` and the
/// `added_tokens` of `tokenizer.json` the way transformers 5's `from_pretrained` does.
fn read_settings(dir: &Path, tokenizer_json_added: &[(u32, TokenSpec)]) -> Result<Settings> {
    let mut settings = Settings::sd1_defaults();
    let config_path = dir.join("tokenizer_config.json");
    let config = read_json_object_opt(&config_path)?;

    let mut has_decoder = false;
    if let Some(cfg) = &config {
        for (slot, key) in NAMED.iter().enumerate() {
            if let Some(v) = cfg.get(*key) {
                // An `{"__type": "AddedToken", ...}` object is `AddedToken(**obj)`: not special
                // (yet), `normalized` as written.
                settings.named[slot] = parse_token_value(v, None, &config_path, key)?
                    .map(|t| (t, config_path.clone()));
            }
        }
        for key in ["extra_special_tokens", "additional_special_tokens"] {
            if let Some(v) = cfg.get(key) {
                let list = parse_token_list(v, None, &config_path, key)?;
                if !list.is_empty() {
                    settings.extras = list;
                    break;
                }
            }
        }
        let max_len = cfg.get("model_max_length").or_else(|| cfg.get("max_len"));
        match max_len {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_f64()
                    .filter(|n| *n >= 0.0 && n.fract() == 0.0)
                    .ok_or_else(|| {
                        SdError::config(
                            &config_path,
                            format!("model_max_length: expected a whole number, found {v}"),
                        )
                    })?;
                if n < 2.0 {
                    return Err(SdError::config(
                        &config_path,
                        format!("model_max_length {n} leaves no room for the bos and eos tokens"),
                    ));
                }
                if n < VERY_LARGE_MAX_LEN {
                    settings.max_len = n as usize;
                }
            }
        }
        if let Some(dec) = cfg.get("added_tokens_decoder") {
            has_decoder = true;
            let dec = dec.as_object().ok_or_else(|| {
                SdError::config(&config_path, "added_tokens_decoder: expected an object")
            })?;
            for (id, tok) in dec {
                let what = format!("added_tokens_decoder[{id:?}]");
                let id: u32 = id.parse().map_err(|_| {
                    SdError::config(
                        &config_path,
                        format!("{what}: the key should be a token id"),
                    )
                })?;
                let obj = tok.as_object().ok_or_else(|| {
                    SdError::config(&config_path, format!("{what}: expected an object"))
                })?;
                settings
                    .added
                    .insert(id, parse_token_object(obj, None, &config_path, &what)?);
            }
        }
    }

    // content -> token, for re-reading the named tokens as added tokens (last one wins)
    let mut by_content: HashMap<String, TokenSpec> = HashMap::new();
    if has_decoder {
        for t in settings.added.values() {
            by_content.insert(t.content.clone(), t.clone());
        }
    } else {
        // Legacy layout: special_tokens_map.json overrides the config's special tokens.
        let map_path = dir.join("special_tokens_map.json");
        if let Some(map) = read_json_object_opt(&map_path)? {
            for (slot, key) in NAMED.iter().enumerate() {
                if let Some(v) = map.get(*key) {
                    if let Some(t) = parse_token_value(v, Some(true), &map_path, key)? {
                        settings.named[slot] = Some((t, map_path.clone()));
                    }
                }
            }
            for key in ["extra_special_tokens", "additional_special_tokens"] {
                if let Some(v) = map.get(key) {
                    for t in parse_token_list(v, Some(true), &map_path, key)? {
                        if !settings.extras.contains(&t) {
                            settings.extras.push(t);
                        }
                    }
                }
            }
        }
        let added_path = dir.join("added_tokens.json");
        if let Some(map) = read_json_object_opt(&added_path)? {
            let specials: HashSet<String> = settings
                .named
                .iter()
                .filter_map(|v| v.as_ref().map(|(v, _)| v.content().to_string()))
                .chain(settings.extras.iter().map(|v| v.content().to_string()))
                .collect();
            for (content, id) in map {
                let id = id
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        SdError::config(&added_path, format!("{content:?}: expected a token id"))
                    })?;
                let special = specials.contains(&content);
                let spec = TokenSpec {
                    content: content.clone(),
                    single_word: false,
                    lstrip: false,
                    rstrip: false,
                    normalized: !special,
                    special,
                };
                by_content.insert(content, spec.clone());
                settings.added.insert(id, spec);
            }
        }
        for (id, spec) in tokenizer_json_added {
            by_content.insert(spec.content.clone(), spec.clone());
            settings.added.insert(*id, spec.clone());
        }
    }
    if !by_content.is_empty() {
        for (value, _) in settings.named.iter_mut().flatten() {
            if let Some(t) = by_content.get(value.content()) {
                *value = TokenValue::Tok(t.clone());
            }
        }
    }
    Ok(settings)
}
