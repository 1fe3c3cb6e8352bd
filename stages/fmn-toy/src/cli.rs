//! The `fmn-toy` command line: `render`, `judge`, `train-judge`.
use crate::dataset::{self, MANIFEST};
use crate::judge::{train, Judge, Verdict, DEFAULT_WEIGHTS_PATH};
use crate::scene::{Concept, IMAGE_SIZE};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "fmn-toy",
    version,
    about = "The toy world: render captioned 64x64 images of named concepts, and judge what images show."
)]
pub struct Cli {
    /// Log at info level (FMN_LOG=debug etc. overrides).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render a set of captioned images with masks and a manifest.
    Render(RenderArgs),
    /// Say what images show: object, colour, striped, character, each with a confidence.
    Judge(JudgeArgs),
    /// Train the judge from scratch (reproducible from the seed).
    TrainJudge(TrainArgs),
    /// Train the toy Stable Diffusion (VAE, then text encoder + UNet) on rendered images and
    /// write it as a diffusers folder; resumable from --checkpoints.
    Train(ModelTrainArgs),
    /// Measure a toy model against the quality bar: judged accuracy of sampled images per
    /// prompt family, and where the object word's cross-attention lands.
    Quality(QualityArgs),
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    /// The model folder (default: the shipped toy model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Images (seeds) per prompt.
    #[arg(long, default_value_t = 8)]
    pub seeds: usize,
    /// DDIM steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale (default: the model folder's `sampling_defaults.json`,
    /// else 7.5).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Rescale the guided prediction towards the conditional one's standard deviation, as
    /// diffusers' `guidance_rescale` (0.7 suggested for velocity models; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f64,
    /// First seed (image i uses seed + i).
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
    /// Also write the full report (per prompt verdicts) to this JSON file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ModelTrainArgs {
    /// The diffusers folder to write (replaced whole when training finishes).
    #[arg(long, default_value = "data/toy-model")]
    pub out: PathBuf,
    /// Checkpoint folder; an interrupted run started again with the same settings resumes.
    #[arg(long, default_value = "out/toy-train-checkpoints")]
    pub checkpoints: PathBuf,
    /// The CLIP tokenizer folder (vocab.json + merges.txt) shipped with the model.
    #[arg(long, default_value = "data/clip-tokenizer")]
    pub tokenizer: PathBuf,
    /// YAML file with training settings (keys as in `TrainSettings`); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Rendered training images.
    #[arg(long)]
    pub images: Option<usize>,
    #[arg(long)]
    pub vae_steps: Option<usize>,
    #[arg(long)]
    pub unet_steps: Option<usize>,
    #[arg(long)]
    pub decoder_steps: Option<usize>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Print the training report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images.
    #[arg(long)]
    pub count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only images showing this concept: circle, square, triangle, cross, red, green, blue,
    /// yellow, stripes, bob, kiki.
    #[arg(long)]
    pub only: Option<Concept>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// PNG/JPEG files, or folders (their PNG/JPEG files, not recursively).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Judge weights (default: the committed ones, compiled in).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Probability a figure needs to be reported.
    #[arg(long, default_value_t = 0.5)]
    pub min_figure: f32,
    /// Probability an attribute needs to be reported as sure (else "unknown").
    #[arg(long, default_value_t = 0.6)]
    pub min_confidence: f32,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Where to write the weights.
    #[arg(long, default_value = DEFAULT_WEIGHTS_PATH)]
    pub out: PathBuf,
    #[arg(long, default_value_t = train::TrainOptions::default().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = train::TrainOptions::default().steps)]
    pub steps: usize,
    #[arg(long, default_value_t = train::TrainOptions::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = train::TrainOptions::default().lr)]
    pub lr: f64,
    /// Print the training report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Render(a) => render(a),
        Command::Judge(a) => judge(a),
        Command::TrainJudge(a) => train_judge(a),
        Command::Train(a) => train_model(a),
        Command::Quality(a) => quality(a),
    }
}

#[derive(Serialize)]
struct RenderSummary<'a> {
    out: &'a Path,
    manifest: PathBuf,
    count: usize,
    seed: u64,
    only: Option<Concept>,
}

fn render(a: &RenderArgs) -> Result<ExitCode> {
    let bar = fmn_cli::progress::bar(a.count as u64, "rendering", a.quiet);
    let manifest = dataset::render_set(&a.out, a.count, a.seed, a.only, |i| {
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    if a.json {
        let summary = RenderSummary {
            out: &a.out,
            manifest: a.out.join(MANIFEST),
            count: manifest.count,
            seed: a.seed,
            only: a.only,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "rendered {} images into {}",
            manifest.count,
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The image files named by `inputs`: files as given, folders' PNG/JPEG files sorted by name.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .with_context(|| format!("{}: cannot open", input.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("{}: cannot read folder", input.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("{}: cannot read folder", input.display()))?;
            found.retain(|p| p.is_file() && is_image_name(p));
            if found.is_empty() {
                bail!("{}: no PNG or JPEG images in this folder", input.display());
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Reads an image (format guessed from its content), as 64×64 RGB.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let image = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable PNG or JPEG image", path.display()))?
        .to_rgb8();
    if image.width() == 0 || image.height() == 0 {
        bail!("{}: empty image", path.display());
    }
    Ok(if image.dimensions() == (IMAGE_SIZE, IMAGE_SIZE) {
        image
    } else {
        image::imageops::resize(&image, IMAGE_SIZE, IMAGE_SIZE, FilterType::Triangle)
    })
}

#[derive(Serialize)]
struct JudgedImage<'a> {
    file: String,
    description: String,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

#[derive(Serialize)]
struct JudgeOutput<'a> {
    weights: String,
    min_figure: f32,
    min_confidence: f32,
    images: Vec<JudgedImage<'a>>,
}

fn judge(a: &JudgeArgs) -> Result<ExitCode> {
    let files = collect_images(&a.images)?;
    let images: Vec<RgbImage> = files.iter().map(|f| load_image(f)).collect::<Result<_>>()?;
    let (judge, weights) = match &a.weights {
        Some(p) => (
            Judge::load(p).with_context(|| format!("cannot load judge weights {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            Judge::load_default()?,
            format!("{DEFAULT_WEIGHTS_PATH} (built in)"),
        ),
    };
    let judge = judge.with_thresholds(a.min_figure, a.min_confidence);
    let verdicts = judge.try_judge_batch(&images)?;
    if a.json {
        let out = JudgeOutput {
            weights,
            min_figure: a.min_figure,
            min_confidence: a.min_confidence,
            images: files
                .iter()
                .zip(&verdicts)
                .map(|(f, v)| JudgedImage {
                    file: f.display().to_string(),
                    description: v.description(),
                    verdict: v,
                })
                .collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (f, v) in files.iter().zip(&verdicts) {
            let p = &v.probabilities;
            println!(
                "{}\t{}\t(figure {:.2}, object {:.2}, colour {:.2}, striped {:.2}, character {:.2})",
                f.display(),
                v.description(),
                p.figure,
                v.object.confidence,
                v.colour.confidence,
                v.striped.confidence,
                v.character.confidence
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn train_judge(a: &TrainArgs) -> Result<ExitCode> {
    if a.steps == 0 || a.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    let opts = train::TrainOptions {
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        quiet: a.quiet,
        ..train::TrainOptions::default()
    };
    let (judge, report) = train::train(&opts)?;
    let command = format!(
        "fmn-toy train-judge --seed {} --steps {} --batch {} --lr {}",
        a.seed, a.steps, a.batch, a.lr
    );
    train::save(&judge, &a.out, &[("command", command)])
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let line = |name: &str, acc: &train::Accuracy| {
            eprintln!(
                "{name}: object {:.4} colour {:.4} striped {:.4} character {:.4} figure {:.4} garbage rejected {:.4}",
                acc.object, acc.colour, acc.striped, acc.character, acc.figure, acc.garbage_rejected
            )
        };
        eprintln!(
            "trained in {:.0} s, final loss {:.4}; wrote {}",
            report.seconds,
            report.final_loss,
            a.out.display()
        );
        line("clean held-out renders", &report.clean);
        line("degraded held-out renders", &report.degraded);
    }
    Ok(ExitCode::SUCCESS)
}

fn train_model(a: &ModelTrainArgs) -> Result<ExitCode> {
    let mut settings = match &a.config {
        Some(path) => fmn_core::load_yaml::<crate::train::TrainSettings>(path)?,
        None => crate::train::TrainSettings::default(),
    };
    let overrides = [
        (a.images, &mut settings.images),
        (a.vae_steps, &mut settings.vae_steps),
        (a.unet_steps, &mut settings.unet_steps),
        (a.decoder_steps, &mut settings.decoder_steps),
        (a.checkpoint_every, &mut settings.checkpoint_every),
    ];
    for (flag, slot) in overrides {
        if let Some(v) = flag {
            *slot = v;
        }
    }
    if let Some(seed) = a.seed {
        settings.seed = seed;
    }
    if settings.images == 0 || settings.checkpoint_every == 0 {
        bail!("--images and --checkpoint-every must be at least 1");
    }
    let source = a
        .config
        .as_ref()
        .map_or("the settings".to_string(), |p| p.display().to_string());
    for (key, batch) in [
        ("vae_batch", settings.vae_batch),
        ("unet_batch", settings.unet_batch),
        ("decoder_batch", settings.decoder_batch),
        ("batch_parts", settings.batch_parts),
    ] {
        if batch == 0 {
            bail!("{source}: `{key}` must be at least 1");
        }
    }
    for (key, v) in [
        ("vae_lr", settings.vae_lr),
        ("unet_lr", settings.unet_lr),
        ("decoder_lr", settings.decoder_lr),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{source}: `{key}` must be a positive number, not {v}");
        }
    }
    for (key, v) in [
        ("decoder_figure_weight", settings.decoder_figure_weight),
        ("attention_weight", settings.attention_weight),
        ("min_snr_gamma", settings.min_snr_gamma),
        ("figure_edge_weight", settings.figure_edge_weight),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{source}: `{key}` must be 0 or more, not {v}");
        }
    }
    if settings.unet_lr_decay_steps > settings.unet_steps {
        bail!(
            "{source}: `unet_lr_decay_steps` ({}) cannot exceed `unet_steps` ({})",
            settings.unet_lr_decay_steps,
            settings.unet_steps
        );
    }
    if settings.batch_parts > 1 {
        fmn_core::allocator::share_one_arena();
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            // Read by candle at each matrix product: the batch parts are the parallelism.
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
    }
    let spec = crate::scene::SceneSpec::default();
    let examples: Vec<crate::train::Example> = (0..settings.images as u64)
        .map(|i| {
            let (scene, caption) = dataset::draw(settings.seed, i, &spec);
            let (image, mask) = crate::render(&scene);
            crate::train::Example {
                image,
                mask,
                caption,
            }
        })
        .collect();
    let report = crate::train::train(
        &settings,
        &examples,
        &a.tokenizer,
        &a.checkpoints,
        &a.out,
        a.quiet,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!(
            "wrote {} (VAE {:.0} s, final reconstruction MSE {:.4}; UNet {:.0} s, final loss {:.4}; decoder {:.0} s, final weighted MSE {:.4})",
            a.out.display(),
            report.vae_seconds,
            report.vae_final_loss,
            report.unet_seconds,
            report.unet_final_loss,
            report.decoder_seconds,
            report.decoder_final_loss
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn quality(a: &QualityArgs) -> Result<ExitCode> {
    let dir = a.model.clone().unwrap_or_else(fmn_core::default_model_dir);
    let sd = fmn_sd::sample::pipeline::StableDiffusion::load(
        &dir,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .with_context(|| format!("cannot load the model {}", dir.display()))?;
    let judge = crate::judge::Judge::load_default()?;
    let settings = crate::quality::QualitySettings {
        seeds: a.seeds,
        steps: a.steps,
        guidance: fmn_sd::io::sampling_defaults::resolve_guidance(a.guidance, &dir)?,
        guidance_rescale: a.guidance_rescale,
        seed: a.seed,
    };
    if settings.seeds == 0 || settings.steps == 0 {
        bail!("--seeds and --steps must be at least 1");
    }
    fmn_sd::sample::pipeline::check_guidance_rescale(settings.guidance_rescale)
        .context("--guidance-rescale")?;
    let bar = fmn_cli::progress::bar(34, "prompts", a.quiet);
    let report = crate::quality::measure(&sd, &judge, &settings, |p| {
        bar.inc(1);
        bar.set_message(p.to_string());
    })?;
    bar.finish_and_clear();
    if let Some(path) = &a.report {
        fmn_core::write_json_atomic(path, &report)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    if a.json {
        let mut summary = serde_json::to_value(&report)?;
        summary.as_object_mut().map(|m| m.remove("prompts"));
        println!("{summary}");
    } else {
        eprintln!(
            "object {} colour {} | bob {} kiki {} | striped with style {} without {} | object-word attention in figure {} vs figure share {} (ratio {:.2}) | VAE reconstructions judged right: any scene {} bob {} kiki {} striped {} | {:.0} s",
            pct(report.object_accuracy),
            pct(report.colour_accuracy),
            pct(report.bob_rate),
            pct(report.kiki_rate),
            pct(report.striped_with_style),
            pct(report.striped_without_style),
            pct(report.attention_in_figure),
            pct(report.figure_share),
            report.attention_ratio,
            pct(report.vae_reconstruction.any_scene),
            pct(report.vae_reconstruction.bob),
            pct(report.vae_reconstruction.kiki),
            pct(report.vae_reconstruction.striped),
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
