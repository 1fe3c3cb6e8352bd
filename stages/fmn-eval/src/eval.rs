//! One evaluation: pair the folders, judge the images, measure drift and attention, and
//! collect per-image results.
use crate::attention::{self, AttentionFile};
use crate::cli::Settings;
use crate::drift;
use crate::items::{Drift, Item, Results, Side};
use crate::judge::{self, Judge};
use crate::samples::{self, Pair, SampleDir};
use crate::suite::{Group, Suite};
use anyhow::{bail, Context, Result};
use fmn_sd::io::tokenizer::ClipTokenizer;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The attention files and tokenizer, when attention was saved.
struct Attention {
    before: AttentionFile,
    after: AttentionFile,
    tokenizer: ClipTokenizer,
}

fn attention_paths(s: &Settings) -> Result<Option<(PathBuf, PathBuf)>> {
    let default = |dir: &Path| {
        let p = dir.join("attention.safetensors");
        p.is_file().then_some(p)
    };
    let b = s.before_attention.clone().or_else(|| default(&s.before));
    let a = s.after_attention.clone().or_else(|| default(&s.after));
    match (b, a) {
        (Some(b), Some(a)) => Ok(Some((b, a))),
        (None, None) => Ok(None),
        (Some(b), None) => bail!(
            "attention was given for the before folder ({}) but not for the after folder",
            b.display()
        ),
        (None, Some(a)) => bail!(
            "attention was given for the after folder ({}) but not for the before folder",
            a.display()
        ),
    }
}

fn load_image(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read the image {}", path.display()))?
        .to_rgb8())
}

/// Checks the suite against the judge and the folders' prompts.
fn check_suite(
    suite: &Suite,
    settings: &Settings,
    judge: &dyn Judge,
    dirs: &[&SampleDir],
) -> Result<()> {
    for c in &suite.concepts {
        for g in Group::ALL {
            for p in c.group(g) {
                judge.check_expect(&p.expect).map_err(|e| {
                    anyhow::anyhow!(
                        "suite {}: concept `{}`, {} prompt \"{}\": {e}",
                        settings.suite.display(),
                        c.name,
                        g.word(),
                        p.prompt
                    )
                })?;
                for d in dirs {
                    if !d.manifest.prompts.contains(&p.prompt) {
                        bail!(
                            "suite {}: concept `{}`, {} prompt \"{}\" was not sampled in {} (its manifest lists {} prompts)",
                            settings.suite.display(),
                            c.name,
                            g.word(),
                            p.prompt,
                            d.dir.display(),
                            d.manifest.prompts.len()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// `p{prompt:03}_n{image:02}` from the before folder's prompt list.
fn stem(before: &SampleDir, pair: &Pair) -> String {
    let pi = before
        .manifest
        .prompts
        .iter()
        .position(|p| *p == pair.key.prompt)
        .unwrap_or(0);
    format!("p{pi:03}_n{:02}", pair.key.image_index)
}

/// Image pairs decoded and judged at once.
const CHUNK: usize = 32;

/// Runs the evaluation, writing images (and heat maps) under `staging/images/`.
pub fn evaluate(settings: &Settings, staging: &Path, quiet: bool) -> Result<Results> {
    let suite = Suite::load(&settings.suite)?;
    let judge = judge::load(&settings.judge)?;
    let before = SampleDir::load(&settings.before, "before")?;
    let after = SampleDir::load(&settings.after, "after")?;
    check_suite(&suite, settings, judge.as_ref(), &[&before, &after])?;

    let prompts = suite.prompts();
    let pairs = samples::pair(&before, &after)?;
    let pairs: Vec<Pair> = pairs
        .into_iter()
        .filter(|p| prompts.contains(&p.key.prompt.as_str()))
        .collect();
    let pairs = samples::shard_pairs(pairs, settings.shard);
    tracing::info!("{} image pairs in shard {}", pairs.len(), settings.shard);
    crate::preflight::check(&pairs, CHUNK, settings.max_memory)?;

    let attention = match attention_paths(settings)? {
        Some((b, a)) => {
            let tok_dir = settings
                .tokenizer
                .clone()
                .unwrap_or_else(|| PathBuf::from(&before.manifest.model).join("tokenizer"));
            let tokenizer = ClipTokenizer::from_dir(&tok_dir).with_context(|| {
                format!(
                    "cannot load the CLIP tokenizer {} (give --tokenizer DIR)",
                    tok_dir.display()
                )
            })?;
            Some(Attention {
                before: AttentionFile::load(&b, before.manifest.images.len())?,
                after: AttentionFile::load(&a, after.manifest.images.len())?,
                tokenizer,
            })
        }
        None => None,
    };

    let images_dir = staging.join("images");
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("cannot create {}", images_dir.display()))?;
    let bar = fmn_cli::progress::bar(pairs.len() as u64, "judging", quiet);
    let mut items = Vec::new();
    for chunk in pairs.chunks(CHUNK) {
        let b_imgs = chunk
            .iter()
            .map(|p| load_image(&p.before_file))
            .collect::<Result<Vec<_>>>()?;
        let a_imgs = chunk
            .iter()
            .map(|p| load_image(&p.after_file))
            .collect::<Result<Vec<_>>>()?;
        let b_judged = judge.judge(&b_imgs)?;
        let a_judged = judge.judge(&a_imgs)?;
        let prompts: Vec<&str> = chunk.iter().map(|p| p.key.prompt.as_str()).collect();
        let b_clip = judge.clip_scores(&b_imgs, &prompts)?;
        let a_clip = judge.clip_scores(&a_imgs, &prompts)?;
        for (i, pair) in chunk.iter().enumerate() {
            let (bi, ai) = (&b_imgs[i], &a_imgs[i]);
            let d = Drift {
                mean_abs_diff: drift::mean_abs_diff(bi, ai).with_context(|| {
                    format!(
                        "{} vs {}",
                        pair.before_file.display(),
                        pair.after_file.display()
                    )
                })?,
                ssim: drift::ssim(bi, ai)?,
            };
            let stem = stem(&before, pair);
            let b_name = format!("images/{stem}_before.png");
            let a_name = format!("images/{stem}_after.png");
            bi.save(staging.join(&b_name))?;
            ai.save(staging.join(&a_name))?;
            for c in &suite.concepts {
                for g in Group::ALL {
                    for spec in c.group(g).iter().filter(|s| s.prompt == pair.key.prompt) {
                        let mut sides = [(None, None), (None, None)];
                        if let (Some(att), true) = (&attention, g != Group::Preserved) {
                            let pos = attention::token_positions(
                                &att.tokenizer,
                                &spec.prompt,
                                &c.token_words(),
                            )?;
                            if !pos.is_empty() {
                                for (k, (file, row, img, side)) in [
                                    (&att.before, pair.before_row, bi, "before"),
                                    (&att.after, pair.after_row, ai, "after"),
                                ]
                                .into_iter()
                                .enumerate()
                                {
                                    let share = file.share(row, &pos)?;
                                    let heat =
                                        file.heat_map(row, &pos, img.width(), img.height())?;
                                    let name = format!("images/{stem}_{}_{side}_attn.png", c.name);
                                    attention::overlay(img, &heat).save(staging.join(&name))?;
                                    sides[k] = (Some(share), Some(name));
                                }
                            }
                        }
                        let [(bs, bh), (as_, ah)] = sides;
                        items.push(Item {
                            concept: c.name.clone(),
                            group: g,
                            prompt: spec.prompt.clone(),
                            seed: pair.key.seed,
                            image_index: pair.key.image_index,
                            before: Side {
                                correct: b_judged[i].matches(&spec.expect),
                                verdict: b_judged[i].description.clone(),
                                attention_share: bs,
                                image: b_name.clone(),
                                heatmap: bh,
                                clip_score: b_clip.as_ref().map(|c| c[i]),
                            },
                            after: Side {
                                correct: a_judged[i].matches(&spec.expect),
                                verdict: a_judged[i].description.clone(),
                                attention_share: as_,
                                image: a_name.clone(),
                                heatmap: ah,
                                clip_score: a_clip.as_ref().map(|c| c[i]),
                            },
                            drift: d,
                        });
                    }
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    // The attack images once, with the first shard.
    let mut attacks = Vec::new();
    if settings.shard.index == 0 {
        for dir in &settings.attack {
            attacks.extend(crate::attack::judge_attack(
                dir,
                &suite,
                judge.as_ref(),
                staging,
            )?);
        }
    }
    Ok(Results {
        fmn_version: fmn_core::VERSION.into(),
        suite,
        judge: settings.judge.to_string(),
        judge_model: judge.model(),
        before: settings.before.display().to_string(),
        after: settings.after.display().to_string(),
        shards: vec![settings.shard],
        items,
        attacks,
    })
}
