//! The prompts a concept is trained on, and where its tokens sit in them.
use crate::ResteerError;
use fmn_sd::io::tokenizer::ClipTokenizer;

/// One training prompt: its 77 token ids and the positions whose attention is suppressed.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    pub positions: Vec<usize>,
}

/// Which end-of-text positions count besides the concept's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerPositions {
    None,
    /// Every end-of-text position, as the original selects them by token id (so SD1's
    /// end-of-text padding counts too).
    All,
    /// The first end-of-text position only: the one CLIP pools the prompt's meaning into.
    First,
}

/// `template` with `{}` replaced by `concept`; the positions are those of the concept's tokens
/// (every occurrence), plus the end-of-text positions `pooler` names.
pub fn concept_prompt(
    tokenizer: &ClipTokenizer,
    template: &str,
    concept: &str,
    pooler: PoolerPositions,
) -> Result<ConceptPrompt, ResteerError> {
    // The template's brackets only mark what anchor prompts replace; the concept keeps its own.
    let text = template.replace(['[', ']'], "").replacen("{}", concept, 1);
    let ids = tokenizer.encode(&text)?;
    if tokenizer.tokenize(concept)?.is_empty() {
        return Err(ResteerError::Input(format!(
            "concept {concept:?} has no tokens"
        )));
    }
    let mut positions = tokenizer.positions_of(&ids, concept)?;
    if positions.is_empty() {
        return Err(ResteerError::Input(format!(
            "the tokens of concept {concept:?} do not appear in the prompt {text:?} (within {} tokens)",
            ids.len()
        )));
    }
    if pooler != PoolerPositions::None {
        let eos = tokenizer.eos_id();
        let at_eos = ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == eos)
            .map(|(p, _)| p);
        match pooler {
            PoolerPositions::First => positions.extend(at_eos.take(1)),
            _ => positions.extend(at_eos),
        }
        positions.sort_unstable();
        positions.dedup();
    }
    Ok(ConceptPrompt {
        text,
        ids,
        positions,
    })
}

/// The anchor prompt of `template`: the bracketed part of the template (the concept and the
/// words that go with it: "a red square[ in the style of {}]") or else the `{}` alone, replaced
/// by `anchor`, spaces tidied ("a photo of {}" with "" → "a photo of").
pub fn anchor_prompt(template: &str, anchor: &str) -> String {
    let text = match (template.find('['), template.find(']')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{anchor}{}", &template[..open], &template[close + 1..])
        }
        _ => template.replacen("{}", anchor, 1),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A template is one `{}` and, optionally, one `[...]` around it marking what its anchor drops.
pub fn check_template(template: &str) -> Result<(), String> {
    let (open, close) = (template.matches('[').count(), template.matches(']').count());
    let slot = template.find("{}");
    if template.matches("{}").count() != 1 {
        return Err(format!("template {template:?} must hold exactly one {{}}"));
    }
    match (open, close, template.find('['), template.find(']'), slot) {
        (0, 0, ..) => Ok(()),
        (1, 1, Some(o), Some(c), Some(s)) if o < s && s < c => Ok(()),
        _ => Err(format!(
            "template {template:?}: at most one [...] and it must hold the {{}}"
        )),
    }
}

/// A preserved-list entry that names `concept`, as a template of the concept's prompts: where
/// the entry holds the bracketed phrase of one of the kind's `templates` ("in the style of
/// stripes" of "a photo[ in the style of {}]"), that phrase is the bracket ("a red circle[ in
/// the style of {}]"), else the concept's words are the slot ("a blue {}"). Its anchor is then
/// the entry with the phrase or the concept replaced by the anchor ("a red circle", "a blue").
/// `None` where the entry does not name the concept as whole words (case aside) or already
/// holds a template's brackets.
pub fn entry_template(entry: &str, concept: &str, templates: &[String]) -> Option<String> {
    if entry.contains(['[', ']', '{', '}']) {
        return None;
    }
    for template in templates {
        if let (Some(open), Some(close)) = (template.find('['), template.find(']')) {
            let bracket = template[open + 1..close].trim();
            if let Some((s, e)) = find_words(entry, &bracket.replacen("{}", concept, 1)) {
                // The space before the phrase goes inside the bracket, so the anchor has none.
                let before = entry[..s].trim_end();
                return Some(format!(
                    "{before}[{}{bracket}]{}",
                    &entry[before.len()..s],
                    &entry[e..]
                ));
            }
        }
    }
    let (s, e) = find_words(entry, concept)?;
    Some(format!("{}{{}}{}", &entry[..s], &entry[e..]))
}

/// The byte span in `text` of the first run of words equal to `phrase`'s, case aside (words:
/// runs of alphanumerics; what lies between them does not count). One rule for "names the
/// concept", shared with the preservation's take-out ([`crate::preserve::names_any`]).
pub fn find_words(text: &str, phrase: &str) -> Option<(usize, usize)> {
    let (words, needle) = (words_of(text), words_of(phrase));
    if needle.is_empty() {
        return None;
    }
    words
        .windows(needle.len())
        .find(|w| w.iter().zip(&needle).all(|(a, b)| a.1 == b.1))
        .map(|w| (w[0].0.start, w[w.len() - 1].0.end))
}

/// The words of `s` (runs of alphanumerics), each with its byte range and lower-cased.
fn words_of(s: &str) -> Vec<(std::ops::Range<usize>, String)> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices().chain([(s.len(), ' ')]) {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(b)) => {
                words.push((b..i, s[b..i].to_lowercase()));
                start = None;
            }
            _ => {}
        }
    }
    words
}
