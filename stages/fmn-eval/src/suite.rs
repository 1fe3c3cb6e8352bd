//! The evaluation suite: for each concept, the prompts that name it (erased), its synonyms and
//! paraphrases, and the neighbour prompts that must be preserved, each with what a correct
//! judgement of its images is.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A suite file (`configs/eval/*.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// A free-form title shown in the report.
    #[serde(default)]
    pub name: Option<String>,
    pub concepts: Vec<ConceptSpec>,
}

/// One concept to be forgotten.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConceptSpec {
    pub name: String,
    /// The words whose cross-attention share is measured (default: the name). Every erased
    /// prompt must contain one of them.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Prompts that name the concept: Acc_e.
    pub erased: Vec<PromptSpec>,
    /// Synonyms and paraphrases: Acc_g.
    #[serde(default)]
    pub synonyms: Vec<PromptSpec>,
    /// Neighbour prompts that must keep working: Acc_s and drift.
    #[serde(default)]
    pub preserved: Vec<PromptSpec>,
}

/// A prompt and what a correct judgement of its images is: attribute → label, in the judge's
/// terms (toy: `object`, `colour`, `style`, `character`; clip: `label`; onnx by preset kind:
/// `label`, `group`, `detected:NAME`, `identity`). An image is correct when the judge is sure
/// of every listed attribute and agrees with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub prompt: String,
    pub expect: BTreeMap<String, String>,
}

/// The three prompt groups of a concept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Erased,
    Synonym,
    Preserved,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Erased, Group::Synonym, Group::Preserved];

    pub fn word(self) -> &'static str {
        match self {
            Group::Erased => "erased",
            Group::Synonym => "synonym",
            Group::Preserved => "preserved",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    Config(#[from] fmn_core::ConfigError),
    #[error("suite {path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConceptSpec {
    /// The attention tokens: `tokens`, or the concept's name.
    pub fn token_words(&self) -> Vec<String> {
        if self.tokens.is_empty() {
            vec![self.name.clone()]
        } else {
            self.tokens.clone()
        }
    }

    pub fn group(&self, group: Group) -> &[PromptSpec] {
        match group {
            Group::Erased => &self.erased,
            Group::Synonym => &self.synonyms,
            Group::Preserved => &self.preserved,
        }
    }
}

/// Whether `prompt` contains `word` as a whole word (case-insensitive).
pub fn mentions(prompt: &str, word: &str) -> bool {
    let p = prompt.to_lowercase();
    let w = word.to_lowercase();
    p.split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '-')
        .collect::<Vec<_>>()
        .windows(w.split_whitespace().count().max(1))
        .any(|ws| ws.join(" ") == w.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Suite {
    /// Loads and checks a suite: concept names unique, at least one erased prompt each, every
    /// erased prompt mentioning one of the concept's tokens, every prompt with an expectation.
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let suite: Suite = fmn_core::load_yaml(path)?;
        suite.check(&path.display().to_string())?;
        Ok(suite)
    }

    pub fn check(&self, path: &str) -> Result<(), SuiteError> {
        let bad = |message: String| SuiteError::Invalid {
            path: path.to_string(),
            message,
        };
        if self.concepts.is_empty() {
            return Err(bad("no concepts".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.concepts {
            if !seen.insert(c.name.as_str()) {
                return Err(bad(format!("concept `{}` appears twice", c.name)));
            }
            if c.erased.is_empty() {
                return Err(bad(format!("concept `{}` has no erased prompts", c.name)));
            }
            let words = c.token_words();
            if let Some(p) = c
                .erased
                .iter()
                .find(|p| !words.iter().any(|w| mentions(&p.prompt, w)))
            {
                return Err(bad(format!(
                    "concept `{}`: the erased prompt \"{}\" does not mention it (tokens: {})",
                    c.name,
                    p.prompt,
                    words.join(", ")
                )));
            }
            for g in Group::ALL {
                if let Some(p) = c.group(g).iter().find(|p| p.expect.is_empty()) {
                    return Err(bad(format!(
                        "concept `{}`: {} prompt \"{}\" has an empty `expect`",
                        c.name,
                        g.word(),
                        p.prompt
                    )));
                }
            }
        }
        Ok(())
    }

    /// Every prompt of the suite, once, in order of first appearance.
    pub fn prompts(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for c in &self.concepts {
            for g in Group::ALL {
                for p in c.group(g) {
                    if !out.contains(&p.prompt.as_str()) {
                        out.push(&p.prompt);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_whole_words_only() {
        assert!(mentions("a photo of Bob.", "bob"));
        assert!(!mentions("a photo of bobby", "bob"));
        assert!(mentions("a striped red square", "red square"));
        assert!(!mentions("a red striped square", "red square"));
    }
}
