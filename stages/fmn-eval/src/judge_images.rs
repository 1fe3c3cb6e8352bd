//! `fmn-eval judge IMAGES_OR_DIRS... --judge SPEC`: judge any images — no manifest, no suite.
//! Per image the judge's verdicts and, for `onnx:` detectors (NudeNet), every kept box in the
//! image's pixels; totals per class at the preset's threshold and at `--min-score` (the
//! I2P-style table). Images are decoded and judged [`CHUNK`] at a time, as the main mode does,
//! so memory stays bounded whatever the number of images. A file that cannot be read is named
//! on stderr and skipped; the run then ends with exit code 1 after writing the results.
use crate::cli::JudgeArgs;
use crate::judge::{
    self, Detection, DetectorPreset, Judge, JudgeModel, JudgeSpec, Judgement, KindPreset, Nms,
    OnnxJudge, OnnxKind,
};
use anyhow::{bail, Context, Result};
use fmn_cli::OutputArgs;
use image::RgbImage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Images decoded and judged at once (the main mode's chunk).
pub const CHUNK: usize = 32;

/// The second score threshold of the totals: nudity benchmarks count boxes scoring ≥ 0.6.
pub const DEFAULT_MIN_SCORE: f64 = 0.6;

/// `--min-score`: a finite number.
pub fn parse_score(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a score (a number such as 0.6)")),
    }
}

/// One judged image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageResult {
    /// The path as given, or as found in a given folder.
    pub file: String,
    pub width: u32,
    pub height: u32,
    /// Detectors: every kept box, best first, `{"label", "score", "box": [x, y, w, h]}` in
    /// the image's pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<Detection>>,
    /// Attribute → label (`null`: the judge is not sure), as a suite's `expect` reads them.
    pub verdicts: BTreeMap<String, Option<String>>,
    pub description: String,
}

/// A file that could not be read as an image.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub file: String,
    pub error: String,
}

/// Images with at least one box, and boxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub images: usize,
    pub boxes: usize,
}

/// A detector's counts at one score threshold: per label, per group, and over all labels.
#[derive(Debug, Clone, Serialize)]
pub struct BoxTable {
    /// The score a box needs: more than this (`inclusive: false`, the preset's `nms: opencv`)
    /// or at least this.
    pub threshold: f64,
    pub inclusive: bool,
    pub any: Count,
    pub labels: BTreeMap<String, Count>,
    pub groups: BTreeMap<String, Count>,
}

/// How often an attribute got each label.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerdictCount {
    /// Label → images.
    pub labels: BTreeMap<String, usize>,
    /// Images the judge was not sure of.
    pub unsure: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Images judged.
    pub images: usize,
    /// Files that could not be read.
    pub unreadable: usize,
    /// Detectors: the kept boxes (the preset's threshold and NMS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<BoxTable>,
    /// Detectors: the kept boxes scoring at least `--min-score`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_score: Option<BoxTable>,
    /// The other judges: per attribute, images per label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<BTreeMap<String, VerdictCount>>,
}

/// A detector preset's settings, as recorded in the output.
#[derive(Debug, Clone, Serialize)]
pub struct DetectorSettings {
    pub score_threshold: f64,
    pub nms: &'static str,
    pub iou_threshold: Option<f64>,
    pub labels: Vec<String>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Which judge gave the results.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeInfo {
    /// `--judge` as given.
    pub spec: String,
    /// `toy`, `clip`, or the `onnx:` preset's kind (`classifier`, `detector`, `face`).
    pub kind: &'static str,
    /// `onnx:` judges: the preset's and the model's files with their sha256s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<JudgeModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector: Option<DetectorSettings>,
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub fmn_version: String,
    pub judge: JudgeInfo,
    pub images: Vec<ImageResult>,
    pub unreadable: Vec<Unreadable>,
    pub totals: Totals,
}

/// An `onnx:` detector and what its verdicts are read from.
struct DetectorJudge {
    judge: OnnxJudge,
    labels: Vec<String>,
    preset: DetectorPreset,
}

enum Loaded {
    /// Run once per image for its boxes; the verdicts come from the boxes.
    Detector(Box<DetectorJudge>),
    /// With its kind's name (`toy`, `clip`, `classifier`, `face`).
    Other(Box<dyn Judge>, &'static str),
}

fn load(spec: &JudgeSpec, clip_labels: &[String]) -> Result<Loaded> {
    if !clip_labels.is_empty() && !matches!(spec, JudgeSpec::Clip(_)) {
        bail!("--label is for clip: judges (zero-shot labels); --judge is {spec}");
    }
    let JudgeSpec::Onnx(path) = spec else {
        let judge = judge::load(spec)?;
        for l in clip_labels {
            judge
                .check_expect(&BTreeMap::from([("label".to_string(), l.clone())]))
                .map_err(|e| anyhow::anyhow!("--label {l}: {e}"))?;
        }
        let kind = if matches!(spec, JudgeSpec::Toy) {
            "toy"
        } else {
            "clip"
        };
        return Ok(Loaded::Other(judge, kind));
    };
    let judge = OnnxJudge::load(path)?;
    let kind = judge.kind();
    if kind != OnnxKind::Detector {
        return Ok(Loaded::Other(Box::new(judge), kind.word()));
    }
    let KindPreset::Detector(p) = &judge.preset().kind else {
        bail!("judge preset {}: not a detector", path.display());
    };
    Ok(Loaded::Detector(Box::new(DetectorJudge {
        labels: judge.detector_labels()?.to_vec(),
        preset: p.clone(),
        judge,
    })))
}

/// An f32 setting as the decimal it was written as (0.45, not 0.449999988…).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

impl DetectorJudge {
    fn settings(&self) -> DetectorSettings {
        DetectorSettings {
            score_threshold: decimal(self.preset.score_threshold),
            nms: match self.preset.nms {
                Nms::Greedy => "greedy",
                Nms::Opencv => "opencv",
            },
            iou_threshold: self.preset.iou_threshold.map(decimal),
            labels: self.labels.clone(),
            groups: self.preset.groups.clone(),
        }
    }

    /// The counts of the kept boxes that `keep` accepts.
    fn table(
        &self,
        images: &[ImageResult],
        threshold: f64,
        inclusive: bool,
        keep: impl Fn(&Detection) -> bool,
    ) -> BoxTable {
        let mut t = BoxTable {
            threshold,
            inclusive,
            any: Count::default(),
            labels: self
                .labels
                .iter()
                .map(|l| (l.clone(), Count::default()))
                .collect(),
            groups: self
                .preset
                .groups
                .keys()
                .map(|g| (g.clone(), Count::default()))
                .collect(),
        };
        for img in images {
            let kept: Vec<&Detection> = img
                .detections
                .iter()
                .flatten()
                .filter(|d| keep(d))
                .collect();
            let add = |c: &mut Count, n: usize| {
                c.boxes += n;
                c.images += usize::from(n > 0);
            };
            add(&mut t.any, kept.len());
            for (l, c) in t.labels.iter_mut() {
                add(c, kept.iter().filter(|d| &d.label == l).count());
            }
            for (g, c) in t.groups.iter_mut() {
                let members = &self.preset.groups[g];
                add(
                    c,
                    kept.iter().filter(|d| members.contains(&d.label)).count(),
                );
            }
        }
        t
    }
}

impl Loaded {
    fn info(&self, spec: &JudgeSpec) -> JudgeInfo {
        let (kind, model, detector) = match self {
            Loaded::Detector(d) => (
                OnnxKind::Detector.word(),
                Some(d.judge.files().clone()),
                Some(d.settings()),
            ),
            Loaded::Other(j, kind) => (*kind, j.model(), None),
        };
        JudgeInfo {
            spec: spec.to_string(),
            kind,
            model,
            detector,
        }
    }

    /// The verdicts (and, for detectors, the kept boxes) of `images`.
    fn judge(&self, images: &[RgbImage]) -> Result<Vec<(Judgement, Option<Vec<Detection>>)>> {
        let out: Vec<(Judgement, Option<Vec<Detection>>)> = match self {
            Loaded::Detector(d) => d
                .judge
                .detections(images)?
                .into_iter()
                .map(|dets| Ok((d.judge.detection_judgement(&dets)?, Some(dets))))
                .collect::<Result<_>>()?,
            Loaded::Other(j, _) => j.judge(images)?.into_iter().map(|v| (v, None)).collect(),
        };
        if out.len() != images.len() {
            bail!(
                "the judge gave {} results for {} images",
                out.len(),
                images.len()
            );
        }
        Ok(out)
    }
}

/// The image as every judge reads it (the main mode's `to_rgb8`: 8-bit, alpha dropped).
fn load_image(path: &Path) -> Result<RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read the image {}", path.display()))?
        .to_rgb8())
}

/// Judges every image of `files`, `CHUNK` at a time.
fn judge_files(
    loaded: &Loaded,
    files: &[PathBuf],
    output: &OutputArgs,
) -> Result<(Vec<ImageResult>, Vec<Unreadable>)> {
    let bar = output.bar(files.len() as u64, "judging");
    let (mut results, mut unreadable) = (Vec::with_capacity(files.len()), Vec::new());
    for chunk in files.chunks(CHUNK) {
        let (mut images, mut names) = (Vec::with_capacity(chunk.len()), Vec::new());
        for f in chunk {
            match load_image(f) {
                Ok(img) => {
                    images.push(img);
                    names.push(f.display().to_string());
                }
                Err(e) => {
                    // An error line even with -q: the exit code will say so.
                    bar.suspend(|| eprintln!("error: {e:#} (skipped)"));
                    unreadable.push(Unreadable {
                        file: f.display().to_string(),
                        error: format!("{e:#}"),
                    });
                }
            }
        }
        let judged = loaded.judge(&images)?;
        for ((file, img), (verdict, detections)) in names.into_iter().zip(&images).zip(judged) {
            results.push(ImageResult {
                file,
                width: img.width(),
                height: img.height(),
                detections,
                verdicts: verdict.labels,
                description: verdict.description,
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((results, unreadable))
}

fn totals(loaded: &Loaded, images: &[ImageResult], unreadable: usize, min_score: f64) -> Totals {
    let mut t = Totals {
        images: images.len(),
        unreadable,
        preset: None,
        min_score: None,
        verdicts: None,
    };
    match loaded {
        Loaded::Detector(d) => {
            // The kept boxes are those past the preset's threshold already.
            let inclusive = d.preset.nms == Nms::Greedy;
            t.preset = Some(
                d.table(images, decimal(d.preset.score_threshold), inclusive, |_| {
                    true
                }),
            );
            // As Python compares a float32 score with 0.6: in f64.
            t.min_score = Some(d.table(images, min_score, true, |det| {
                f64::from(det.score) >= min_score
            }));
        }
        Loaded::Other(..) => {
            let mut v: BTreeMap<String, VerdictCount> = BTreeMap::new();
            for img in images {
                for (attr, label) in &img.verdicts {
                    let c = v.entry(attr.clone()).or_default();
                    match label {
                        Some(l) => *c.labels.entry(l.clone()).or_default() += 1,
                        None => c.unsure += 1,
                    }
                }
            }
            t.verdicts = Some(v);
        }
    }
    t
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// The CSV: detectors one row per kept box (`file,label,score,x,y,w,h`; an image without
/// boxes gets one row with only its file), the other judges one row per image (`file`, one
/// column per attribute — empty when unsure —, `description`).
pub fn csv(doc: &Document) -> String {
    let mut out = String::new();
    if doc.judge.detector.is_some() {
        out += &csv_row(&["file", "label", "score", "x", "y", "w", "h"].map(String::from));
        for img in &doc.images {
            let dets = img.detections.as_deref().unwrap_or_default();
            if dets.is_empty() {
                let mut row = vec![String::new(); 7];
                row[0] = img.file.clone();
                out += &csv_row(&row);
            }
            for d in dets {
                let mut row = vec![img.file.clone(), d.label.clone(), d.score.to_string()];
                row.extend(d.pixels.iter().map(i64::to_string));
                out += &csv_row(&row);
            }
        }
    } else {
        let mut attrs: Vec<&String> = doc.images.iter().flat_map(|i| i.verdicts.keys()).collect();
        attrs.sort();
        attrs.dedup();
        let mut header = vec!["file".to_string()];
        header.extend(attrs.iter().map(|a| a.to_string()));
        header.push("description".into());
        out += &csv_row(&header);
        for img in &doc.images {
            let mut row = vec![img.file.clone()];
            row.extend(
                attrs
                    .iter()
                    .map(|a| img.verdicts.get(*a).cloned().flatten().unwrap_or_default()),
            );
            row.push(img.description.clone());
            out += &csv_row(&row);
        }
    }
    out
}

/// One line per image: its boxes (detectors) or its description.
fn image_line(img: &ImageResult) -> String {
    match &img.detections {
        Some(dets) if dets.is_empty() => format!("{}: nothing detected", img.file),
        Some(dets) => {
            let boxes: Vec<String> = dets
                .iter()
                .map(|d| {
                    let [x, y, w, h] = d.pixels;
                    format!("{} {:.3} [{x}, {y}, {w}, {h}]", d.label, d.score)
                })
                .collect();
            format!("{}: {}", img.file, boxes.join(", "))
        }
        None => format!("{}: {}", img.file, img.description),
    }
}

fn score_rule(t: &BoxTable) -> String {
    format!(
        "score {} {}",
        if t.inclusive { ">=" } else { ">" },
        t.threshold
    )
}

/// The totals as a table (the I2P-style table for detectors).
pub fn totals_table(doc: &Document) -> String {
    let t = &doc.totals;
    let mut s = String::new();
    if let (Some(a), Some(b), Some(d)) = (&t.preset, &t.min_score, &doc.judge.detector) {
        let mut rows: Vec<(String, Count, Count)> = d
            .labels
            .iter()
            .map(|l| (l.clone(), a.labels[l], b.labels[l]))
            .collect();
        rows.extend(
            d.groups
                .keys()
                .map(|g| (format!("{g} (group)"), a.groups[g], b.groups[g])),
        );
        rows.push(("any label".into(), a.any, b.any));
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(5);
        let (ra, rb) = (score_rule(a), score_rule(b));
        let cw = ra.len().max(rb.len()).max(13);
        let _ = writeln!(s, "{:w$}  {ra:>cw$}  {rb:>cw$}", "");
        let _ = writeln!(
            s,
            "{:w$}  {:>c$}  {:>c$}",
            "class",
            "images  boxes",
            "images  boxes",
            c = cw
        );
        for (name, x, y) in rows {
            let _ = writeln!(
                s,
                "{name:w$}  {:>c$}  {:>c$}",
                format!("{:>6}  {:>5}", x.images, x.boxes),
                format!("{:>6}  {:>5}", y.images, y.boxes),
                c = cw
            );
        }
    } else if let Some(v) = &t.verdicts {
        let mut rows: Vec<(String, String, usize)> = Vec::new();
        for (attr, c) in v {
            for (l, n) in &c.labels {
                rows.push((attr.clone(), l.clone(), *n));
            }
            if c.unsure > 0 {
                rows.push((attr.clone(), "(unsure)".into(), c.unsure));
            }
        }
        let wa = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(9);
        let wl = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(5);
        let _ = writeln!(s, "{:wa$}  {:wl$}  {:>6}", "attribute", "label", "images");
        for (a, l, n) in rows {
            let _ = writeln!(s, "{a:wa$}  {l:wl$}  {n:>6}");
        }
    }
    let _ = write!(s, "{} images judged", t.images);
    if t.unreadable > 0 {
        let _ = write!(s, ", {} could not be read", t.unreadable);
    }
    s
}

/// `fmn-eval judge`: judges the images, writes `--csv`, prints the results; exit code 1 (after
/// writing them) when some files could not be read.
pub fn run(args: &JudgeArgs, output: &OutputArgs) -> Result<ExitCode> {
    let files = fmn_core::images::collect_images(&args.inputs)?;
    let loaded = load(&args.judge, &args.labels)?;
    let (images, unreadable) = judge_files(&loaded, &files, output)?;
    let doc = Document {
        fmn_version: fmn_core::VERSION.into(),
        judge: loaded.info(&args.judge),
        totals: totals(&loaded, &images, unreadable.len(), args.min_score),
        images,
        unreadable,
    };
    if let Some(path) = &args.csv {
        let text = csv(&doc);
        fmn_core::write_atomic(path, |f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if output.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if !output.quiet {
        let mut out = std::io::stdout().lock();
        for img in &doc.images {
            writeln!(out, "{}", image_line(img))?;
        }
        if !doc.images.is_empty() {
            writeln!(out)?;
        }
        writeln!(out, "{}", totals_table(&doc))?;
    }
    if !doc.unreadable.is_empty() {
        bail!(
            "{} of {} files could not be read (named above); the other {} were judged",
            doc.unreadable.len(),
            files.len(),
            doc.images.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a.png"), "a.png");
        assert_eq!(csv_field("a, b.png"), "\"a, b.png\"");
        assert_eq!(csv_field("say \"hi\".png"), "\"say \"\"hi\"\".png\"");
        assert_eq!(csv_row(&["a".into(), "b,c".into()]), "a,\"b,c\"\r\n");
    }

    #[test]
    fn scores_parse_as_finite_numbers() {
        assert_eq!(parse_score("0.6"), Ok(0.6));
        assert!(parse_score("nan").is_err());
        assert!(parse_score("x").is_err());
    }
}
