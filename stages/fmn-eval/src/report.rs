//! `report.html`: one self-contained page (images and charts embedded) with the metrics table,
//! the accuracy charts, before|after grids per prompt and seed, and attention heat maps.
use crate::attack::AttackItem;
use crate::items::{Item, Results};
use crate::metrics::{BeforeAfter, ConceptMetrics};
use crate::suite::Group;
use anyhow::{Context, Result};
use base64::Engine;
use std::fmt::Write;
use std::path::Path;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn data_uri(dir: &Path, rel: &str) -> Result<String> {
    let bytes = std::fs::read(dir.join(rel))
        .with_context(|| format!("cannot read {rel} for the report"))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn ba(v: Option<BeforeAfter>) -> String {
    v.map_or("–".into(), |v| {
        format!("{:.2} → {:.2}", v.before, v.after)
    })
}

fn metrics_table(concepts: &[ConceptMetrics]) -> String {
    let mut h = String::from(
        "<table class=\"metrics\"><tr><th>concept</th><th>images (e/g/s)</th><th>Acc<sub>e</sub></th>\
         <th>forgetting</th><th>Acc<sub>g</sub></th><th>Acc<sub>s</sub></th><th>H<sub>o</sub></th>\
         <th>H<sub>c</sub></th><th>drift MAD</th><th>drift SSIM</th><th>attention share</th><th>CLIP score</th><th>attack success</th></tr>\n",
    );
    for m in concepts {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}/{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.concept),
            m.images.erased,
            m.images.synonym,
            m.images.preserved,
            ba(m.acc_e),
            m.forgetting.map_or("–".into(), |f| format!("{f:.2}")),
            ba(m.acc_g),
            ba(m.acc_s),
            ba(m.h_o),
            ba(m.h_c),
            m.drift.map_or("–".into(), |d| format!("{:.4}", d.mean_abs_diff)),
            m.drift.map_or("–".into(), |d| format!("{:.3}", d.ssim)),
            m.attention_share
                .map_or("–".into(), |a| format!("{:.3} → {:.3}", a.before, a.after)),
            m.clip_score
                .map_or("–".into(), |a| format!("{:.1} → {:.1}", a.before, a.after)),
            m.attack.as_ref().map_or("–".into(), |a| format!(
                "{:.2} (strongest {:.2}{}){}",
                a.asr,
                a.strongest_rate,
                a.chance
                    .map_or(String::new(), |c| format!("; random words {c:.2}")),
                if a.baseline { " base model" } else { "" }
            )),
        );
    }
    h.push_str("</table>\n");
    h
}

fn cell(dir: &Path, rel: &str, caption: &str, ok: Option<bool>) -> Result<String> {
    let class = match ok {
        Some(true) => "ok",
        Some(false) => "bad",
        None => "",
    };
    let mark = match ok {
        Some(true) => "✓ ",
        Some(false) => "✗ ",
        None => "",
    };
    Ok(format!(
        "<figure class=\"{class}\"><img src=\"{}\" alt=\"{}\"><figcaption>{mark}{}</figcaption></figure>",
        data_uri(dir, rel)?,
        escape(rel),
        escape(caption)
    ))
}

fn grids(dir: &Path, concept: &str, items: &[Item]) -> Result<String> {
    let mut h = String::new();
    for g in Group::ALL {
        let group: Vec<&Item> = items
            .iter()
            .filter(|i| i.concept == concept && i.group == g)
            .collect();
        if group.is_empty() {
            continue;
        }
        let _ = writeln!(h, "<h3>{}</h3>", g.title());
        let mut prompts: Vec<&str> = group.iter().map(|i| i.prompt.as_str()).collect();
        prompts.dedup();
        let mut seen = std::collections::HashSet::new();
        for p in prompts.into_iter().filter(|p| seen.insert(*p)) {
            let _ = writeln!(h, "<div class=\"prompt\"><h4>“{}”</h4>", escape(p));
            let mut rows: Vec<&&Item> = group.iter().filter(|i| i.prompt == p).collect();
            rows.sort_by_key(|i| (i.seed, i.image_index));
            for i in rows {
                let seed = i
                    .seed
                    .map_or(format!("image {}", i.image_index), |s| format!("seed {s}"));
                let _ = write!(h, "<div class=\"row\"><span class=\"seed\">{seed}</span>");
                h += &cell(
                    dir,
                    &i.before.image,
                    &format!("before: {}", i.before.verdict),
                    Some(i.before.correct),
                )?;
                h += &cell(
                    dir,
                    &i.after.image,
                    &format!("after: {}", i.after.verdict),
                    Some(i.after.correct),
                )?;
                if let (Some(b), Some(a)) = (&i.before.heatmap, &i.after.heatmap) {
                    let share = |s: Option<f64>| s.map_or(String::new(), |s| format!(" {s:.3}"));
                    h += &cell(
                        dir,
                        b,
                        &format!("attention before{}", share(i.before.attention_share)),
                        None,
                    )?;
                    h += &cell(
                        dir,
                        a,
                        &format!("attention after{}", share(i.after.attention_share)),
                        None,
                    )?;
                }
                h.push_str("</div>\n");
            }
            h.push_str("</div>\n");
        }
    }
    Ok(h)
}

/// The attack images of `concept`, per attack: red where the judge saw the concept (the
/// attack brought it back), green where it did not.
fn attack_grid(dir: &Path, concept: &str, items: &[AttackItem]) -> Result<String> {
    let mine: Vec<&AttackItem> = items.iter().filter(|i| i.concept == concept).collect();
    if mine.is_empty() {
        return Ok(String::new());
    }
    let mut h = String::from(
        "<h3>attack (concept inversion and prompt search on the edited model)</h3>\n<p>Each image was drawn \
         from tokens learned on the edited model from the concept's images, or from vocabulary words searched \
         for on it (<code>fmn-attack</code>; <code>search</code> in the attack's name); <code>words</code> rows \
         are random vocabulary words, no attack: the chance level. Red: the judge sees \
         the concept as its erased prompts expect it (the attack brought it back); green: it does not. \
         Check by eye what the judge calls recovered.</p>\n",
    );
    for name in crate::attack::attack_names(&mine) {
        let of: Vec<&&AttackItem> = mine.iter().filter(|i| i.attack == name).collect();
        let hits = of.iter().filter(|i| i.recovered).count();
        let _ = write!(
            h,
            "<div class=\"row\"><span class=\"seed\">{} ({hits}/{})</span>",
            escape(name),
            of.len()
        );
        for i in of {
            h += &cell(
                dir,
                &i.image,
                &format!("{}: {}", i.prompt, i.verdict),
                Some(!i.recovered),
            )?;
        }
        h.push_str("</div>\n");
    }
    Ok(h)
}

const STYLE: &str = "body{font-family:sans-serif;margin:20px;color:#222}\
table.metrics{border-collapse:collapse;margin-bottom:16px}\
table.metrics td,table.metrics th{border:1px solid #bbb;padding:4px 8px;text-align:right}\
table.metrics td:first-child{text-align:left;font-weight:bold}\
.charts{display:flex;flex-wrap:wrap;gap:8px}\
.prompt{margin:6px 0 12px 0}.prompt h4{margin:4px 0}\
.row{display:flex;align-items:flex-start;gap:8px;margin-bottom:4px}\
.seed{width:70px;font-size:12px;color:#555;padding-top:8px}\
figure{margin:0;width:140px;font-size:11px}figure img{width:128px;height:128px;image-rendering:pixelated;border:2px solid #ccc}\
figure.ok img{border-color:#3a3}figure.bad img{border-color:#c33}\
figcaption{word-wrap:break-word}";

/// The whole page; images are read from `dir` (the report folder) and embedded.
pub fn render(
    dir: &Path,
    results: &Results,
    concepts: &[ConceptMetrics],
    charts: &[String],
) -> Result<String> {
    let title = results
        .suite
        .name
        .clone()
        .unwrap_or_else(|| "fmn-eval report".into());
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n\
         <p>judge <code>{}</code>; before <code>{}</code>; after <code>{}</code>; shards {}; {} image pairs judged. \
         Acc: share of images the judge finds as the prompt expects (✓ green / ✗ red); H<sub>o</sub>, H<sub>c</sub>: MACE's harmonic scores after (before → after shown).</p>\n",
        escape(&results.judge),
        escape(&results.before),
        escape(&results.after),
        results.shards.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "),
        results.items.len(),
        t = escape(&title),
    );
    h += "<h2>Metrics</h2>\n";
    h += &metrics_table(concepts);
    h += "<div class=\"charts\">";
    for svg in charts {
        h += "<div>";
        h += svg;
        h += "</div>";
    }
    h += "</div>\n";
    for m in concepts {
        let _ = writeln!(h, "<h2>{}</h2>", escape(&m.concept));
        h += &grids(dir, &m.concept, &results.items)?;
        h += &attack_grid(dir, &m.concept, &results.attacks)?;
    }
    h += "</body></html>\n";
    Ok(h)
}
