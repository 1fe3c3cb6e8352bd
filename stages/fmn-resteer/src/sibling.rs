//! A sibling anchor for objects: the concept's prompts are moved onto those of another thing
//! the preserved list names in the same places ("a red square" → "a red triangle"), not onto
//! the prompt without it ("a red"). A model whose prior for "a red" is a square draws the
//! square again from the phrase without it; a sibling is something the model draws as itself
//! (BENCHMARKS.md#sibling-anchors-2026-12-07).
use crate::preserve;

/// How many candidates are solved for; more are first ranked by their words' token embeddings
/// (SD's shipped lists give a one-word concept about 500 one-word candidates). Each costs its
/// anchor prompts' encoding: ≈ 0.4 s per candidate at SD 1.5 size on 2 cores.
pub const SOLVED_CANDIDATES: usize = 4;

/// A word or phrase that fills the concept's templates in the preserved list, and in how many
/// of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub filler: String,
    pub support: usize,
}

/// What stands where `{}` is when `prompt` is `template` (brackets dropped) filled in: the
/// whole words between the template's prefix and suffix.
pub fn filler<'a>(template: &str, prompt: &'a str) -> Option<&'a str> {
    let template = template.replace(['[', ']'], "");
    let (prefix, suffix) = template.split_once("{}")?;
    let middle = prompt.strip_prefix(prefix)?.strip_suffix(suffix)?;
    let at_word_edges = (prefix.is_empty() || prefix.ends_with(' ') || middle.starts_with(' '))
        && (suffix.is_empty() || suffix.starts_with(' ') || middle.ends_with(' '));
    let middle = middle.trim();
    (at_word_edges && !middle.is_empty()).then_some(middle)
}

/// The number of words of `s` not counting a leading article ("a dog" and "snoopy": one).
fn content_words(s: &str) -> usize {
    let mut words = s.split_whitespace().peekable();
    if let Some(first) = words.peek() {
        if ["a", "an", "the"].contains(&first.to_lowercase().as_str()) {
            words.next();
        }
    }
    words.count()
}

/// The sibling candidates of `concept`: fillers of its `templates` in `listed` with as many
/// words as it has (articles aside), naming no concept of the run (`run_concepts`), those that
/// fill the most templates first (ties in list order).
pub fn candidates(
    templates: &[String],
    listed: &[String],
    concept: &str,
    run_concepts: &[String],
) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = Vec::new();
    let words = content_words(concept);
    let concept = [concept.to_string()];
    let mut seen = std::collections::HashSet::new();
    for template in templates.iter().filter(|t| seen.insert(t.as_str())) {
        let mut here = std::collections::HashSet::new();
        for prompt in listed {
            let Some(f) = filler(template, prompt) else {
                continue;
            };
            if content_words(f) != words
                || preserve::names_any(f, run_concepts)
                || preserve::names_any(f, &concept)
                || !here.insert(f.to_lowercase())
            {
                continue;
            }
            match found.iter_mut().find(|c| c.filler.eq_ignore_ascii_case(f)) {
                Some(c) => c.support += 1,
                None => found.push(Candidate {
                    filler: f.to_string(),
                    support: 1,
                }),
            }
        }
    }
    let best = found.iter().map(|c| c.support).max().unwrap_or(0);
    found.retain(|c| c.support == best);
    found
}

/// The index of the smallest of `distances` (the first of equals); `None` if empty or not finite.
pub fn nearest(distances: &[f64]) -> Option<usize> {
    distances
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_filler_is_whole_words_in_the_slot() {
        assert_eq!(filler("a red {}", "a red triangle"), Some("triangle"));
        assert_eq!(
            filler(
                "a red {}[ in the style of stripes]",
                "a red cross in the style of stripes"
            ),
            Some("cross")
        );
        assert_eq!(filler("a photo of {}", "a photo of a dog"), Some("a dog"));
        assert_eq!(filler("{}", "kiki"), Some("kiki"));
        // "a redder" does not hold "a red " followed by a word.
        assert_eq!(filler("a red{}", "a redder"), None);
        assert_eq!(filler("a red {}", "a red "), None);
        assert_eq!(filler("a red {}", "a blue triangle"), None);
    }

    #[test]
    fn articles_do_not_count_as_words() {
        assert_eq!(content_words("a dog"), 1);
        assert_eq!(content_words("An apple"), 1);
        assert_eq!(content_words("snoopy"), 1);
        assert_eq!(content_words("a red circle"), 2);
        assert_eq!(content_words("traffic light"), 2);
    }

    #[test]
    fn the_toy_list_gives_square_its_shape_siblings_and_bob_kiki() {
        let listed = s(&[
            "a red circle",
            "a red square",
            "a red triangle",
            "a blue square",
            "a blue triangle",
            "a blue cross",
            "a red square in the style of stripes",
            "a red triangle in the style of stripes",
            "bob",
            "kiki",
            "a photo of bob",
            "a photo of kiki",
            "a photo of a red circle",
        ]);
        let square = s(&[
            "a photo of {}",
            "a red {}",
            "a blue {}",
            "a red {} in the style of stripes",
        ]);
        // triangle fills three of square's templates, circle and cross one each; kiki (one
        // word, in "a photo of kiki") one.
        assert_eq!(
            candidates(&square, &listed, "square", &s(&["square"])),
            vec![Candidate {
                filler: "triangle".into(),
                support: 3
            }]
        );
        // Without the triangle, the ties stay, in template then list order.
        let without: Vec<String> = listed
            .iter()
            .filter(|p| !p.contains("triangle"))
            .cloned()
            .collect();
        let names: Vec<String> = candidates(&square, &without, "square", &s(&["square"]))
            .into_iter()
            .map(|c| c.filler)
            .collect();
        assert_eq!(names, s(&["bob", "kiki", "circle", "cross"]));
        let bob = s(&["a photo of {}", "{}"]);
        assert_eq!(
            candidates(&bob, &listed, "bob", &s(&["bob"])),
            vec![Candidate {
                filler: "kiki".into(),
                support: 2
            }]
        );
        // kiki forgotten in the same run is no sibling of bob.
        assert!(candidates(&bob, &listed, "bob", &s(&["bob", "kiki"])).is_empty());
    }

    #[test]
    fn the_nearest_is_the_smallest_finite_distance() {
        assert_eq!(nearest(&[3.0, 1.0, 2.0, 1.0]), Some(1));
        assert_eq!(nearest(&[f64::NAN, 2.0]), Some(1));
        assert_eq!(nearest(&[]), None);
    }
}
