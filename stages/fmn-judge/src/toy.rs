//! The toy world's judge: attributes `object`, `colour`, `style` (striped / plain) and
//! `character` (bob / kiki / none).
use super::{Judge, Judgement};
use anyhow::{Context, Result};
use fmn_toy_world::judge::Label;
use fmn_toy_world::{Character, Colour, Object};
use image::RgbImage;
use std::collections::BTreeMap;

pub struct ToyJudge {
    judge: fmn_toy_world::Judge,
}

impl ToyJudge {
    pub fn load() -> Result<ToyJudge> {
        Ok(ToyJudge {
            judge: fmn_toy_world::Judge::load_default().context("cannot load the toy judge")?,
        })
    }
}

fn allowed(key: &str) -> Option<Vec<&'static str>> {
    Some(match key {
        "object" => Object::ALL.iter().map(|o| o.word()).collect(),
        "colour" => Colour::ALL.iter().map(|c| c.word()).collect(),
        "style" => vec!["striped", "plain"],
        "character" => {
            let mut v: Vec<&str> = Character::ALL.iter().map(|c| c.word()).collect();
            v.push("none");
            v
        }
        _ => return None,
    })
}

impl Judge for ToyJudge {
    fn check_expect(&self, expect: &BTreeMap<String, String>) -> Result<(), String> {
        for (k, v) in expect {
            let words = allowed(k).ok_or_else(|| {
                format!("the toy judge has no attribute `{k}` (it knows object, colour, style, character)")
            })?;
            if !words.iter().any(|w| w.eq_ignore_ascii_case(v)) {
                return Err(format!(
                    "`{k}: {v}` is not a toy label (expected one of {})",
                    words.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn judge(&self, images: &[RgbImage]) -> Result<Vec<Judgement>> {
        let verdicts = self
            .judge
            .judge_batch(images)
            .context("the toy judge failed")?;
        Ok(verdicts
            .into_iter()
            .map(|v| {
                let word = |sure: bool, w: &str| sure.then(|| w.to_string());
                let labels = BTreeMap::from([
                    (
                        "object".to_string(),
                        word(v.object.sure, v.object.best.word()),
                    ),
                    (
                        "colour".to_string(),
                        word(v.colour.sure, v.colour.best.word()),
                    ),
                    (
                        "style".to_string(),
                        word(v.striped.sure, v.striped.best.label_word()),
                    ),
                    (
                        "character".to_string(),
                        word(v.character.sure, v.character.best.label_word()),
                    ),
                ]);
                Judgement {
                    labels,
                    description: v.description(),
                }
            })
            .collect())
    }
}
