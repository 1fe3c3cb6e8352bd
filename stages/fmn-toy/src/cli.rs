//! The `fmn-toy` command line: `render`, `judge`, `train-judge` (the world, through
//! [`fmn_toy_world`]), `train`, `quality` (the toy Stable Diffusion), `train-segmenter` (the
//! toy segmenter).
use crate::segmenter;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fmn_cli::{checkpoint_dir_for, switch, OutputArgs, StageArgs};
use fmn_toy_world::dataset::{self, MANIFEST};
use fmn_toy_world::judge::{train, Judge, Verdict, DEFAULT_WEIGHTS_PATH};
use fmn_toy_world::scene::{Concept, SceneSpec, IMAGE_SIZE};
use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "fmn-toy",
    version,
    about = "The toy world: render captioned 64x64 images of named concepts, judge what images show, and train the toy Stable Diffusion on them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl StageArgs for Cli {
    fn output(&self) -> &OutputArgs {
        &self.output
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render a set of captioned images with masks and a manifest.
    Render(RenderArgs),
    /// Say what images show: object, colour, striped, character, each with a confidence.
    Judge(JudgeArgs),
    /// Train the judge from scratch (reproducible from the seed).
    TrainJudge(TrainJudgeArgs),
    /// Train the toy Stable Diffusion (VAE, then text encoder + UNet) on rendered images and
    /// write it as a diffusers folder; resumable from --checkpoints.
    Train(ModelTrainArgs),
    /// Measure a toy model against the quality bar: judged accuracy of sampled images per
    /// prompt family, and where the object word's cross-attention lands.
    Quality(QualityArgs),
    /// Train the toy segmenter on toy-world renders and export it to ONNX (model.onnx and
    /// train.json in --out).
    TrainSegmenter(SegmenterTrainArgs),
}

#[derive(Debug, Args)]
pub struct SegmenterTrainArgs {
    /// Training renders drawn with the toy world's renderer (images `0..N` of seed
    /// --render-seed).
    #[arg(long, default_value_t = 4000, conflicts_with = "data")]
    pub renders: usize,
    #[arg(long, default_value_t = 101)]
    pub render_seed: u64,
    /// Train on a folder instead, as `fmn-toy render` writes it (NAME.png + masks/NAME.png).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Held-out renders to report IoU on (drawn with --holdout-seed; 0: none).
    #[arg(long, default_value_t = 500, conflicts_with = "holdout")]
    pub holdout_renders: usize,
    #[arg(long, default_value_t = 202)]
    pub holdout_seed: u64,
    /// Held-out renders from a folder instead (same layout as --data).
    #[arg(long, value_name = "DIR")]
    pub holdout: Option<PathBuf>,
    /// Where model.onnx and train.json go [default: the shipped model's folder,
    /// $FMN_DATA_DIR/toy-segmenter or the source tree's data/toy-segmenter].
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = segmenter::TrainConfig::default().steps)]
    pub steps: usize,
    #[arg(long, default_value_t = segmenter::TrainConfig::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = segmenter::TrainConfig::default().lr)]
    pub lr: f64,
    /// CPU threads for candle. 1 (the default) gives the same weights on every machine and is
    /// the fastest where other work shares the cores (candle's worker threads spin while
    /// waiting); 0 leaves every stage's default (candle's element-wise ops on one thread, the
    /// products on RAYON_NUM_THREADS, else all cores: `fmn_core::threads`).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

impl SegmenterTrainArgs {
    /// `--out`, else the shipped segmenter's folder.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| fmn_core::data_dir().join("toy-segmenter"))
    }
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    #[command(flatten)]
    pub model: fmn_sd_args::ModelArgs,
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
}

#[derive(Debug, Args)]
pub struct ModelTrainArgs {
    /// The diffusers folder to write (replaced whole when training finishes) [default: the
    /// shipped toy model's folder, $FMN_DATA_DIR/toy-model or the source tree's data/toy-model].
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Checkpoint folder; an interrupted run started again with the same settings resumes
    /// [default: OUT.ckpt beside --out].
    #[arg(long, value_name = "DIR")]
    pub checkpoints: Option<PathBuf>,
    /// The CLIP tokenizer folder (vocab.json + merges.txt) shipped with the model [default:
    /// $FMN_DATA_DIR/clip-tokenizer or the source tree's data/clip-tokenizer].
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// YAML file with training settings (keys as in `TrainSettings`); flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many renders to train on.
    #[arg(long, value_name = "N")]
    pub renders: Option<usize>,
    #[arg(long)]
    pub vae_steps: Option<usize>,
    #[arg(long)]
    pub unet_steps: Option<usize>,
    #[arg(long)]
    pub decoder_steps: Option<usize>,
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// The zero-terminal-SNR velocity schedule (setting `zero_terminal_snr`).
    #[arg(long, overrides_with = "no_zero_terminal_snr")]
    pub zero_terminal_snr: bool,
    /// SD 1.x's schedule and epsilon prediction.
    #[arg(long, overrides_with = "zero_terminal_snr")]
    pub no_zero_terminal_snr: bool,
}

/// The settings `fmn-toy train`'s flags give (`None`: not given), merged over the config.
#[derive(Debug, Serialize)]
struct TrainFlags {
    seed: Option<u64>,
    renders: Option<usize>,
    vae_steps: Option<usize>,
    unet_steps: Option<usize>,
    decoder_steps: Option<usize>,
    checkpoint_every: Option<usize>,
    zero_terminal_snr: Option<bool>,
}

impl ModelTrainArgs {
    fn flags(&self) -> TrainFlags {
        TrainFlags {
            seed: self.seed,
            renders: self.renders,
            vae_steps: self.vae_steps,
            unet_steps: self.unet_steps,
            decoder_steps: self.decoder_steps,
            checkpoint_every: self.checkpoint_every,
            zero_terminal_snr: switch(self.zero_terminal_snr, self.no_zero_terminal_snr),
        }
    }

    /// `--out`, else the shipped model's folder.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| fmn_core::data_dir().join("toy-model"))
    }

    /// `--checkpoints`, else `OUT.ckpt` beside the output.
    pub fn checkpoints(&self) -> PathBuf {
        self.checkpoints
            .clone()
            .unwrap_or_else(|| checkpoint_dir_for(&self.out()))
    }

    /// `--tokenizer`, else the shipped CLIP tokenizer.
    pub fn tokenizer(&self) -> PathBuf {
        self.tokenizer
            .clone()
            .unwrap_or_else(|| fmn_core::data_dir().join("clip-tokenizer"))
    }
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long, short, value_name = "DIR")]
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
}

#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// PNG/JPEG files, or folders (their PNG/JPEG files, not recursively).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub images: Vec<PathBuf>,
    /// Judge weights (default: the committed ones, compiled in).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Probability a figure needs to be reported.
    #[arg(long, default_value_t = 0.5)]
    pub min_figure: f32,
    /// Probability an attribute needs to be reported as sure (else "unknown").
    #[arg(long, default_value_t = 0.6)]
    pub min_confidence: f32,
}

#[derive(Debug, Args)]
pub struct TrainJudgeArgs {
    /// Where to write the weights [default: the committed file, $FMN_DATA_DIR/toy-judge/
    /// judge.safetensors or the source tree's data/toy-judge/judge.safetensors].
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = train::TrainOptions::default().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = train::TrainOptions::default().steps)]
    pub steps: usize,
    #[arg(long, default_value_t = train::TrainOptions::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = train::TrainOptions::default().lr)]
    pub lr: f64,
}

impl TrainJudgeArgs {
    /// `--out`, else the committed weights' file.
    pub fn out(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| fmn_core::data_dir().join("toy-judge/judge.safetensors"))
    }
}

/// Parses the command line and runs the command.
pub fn run() -> Result<ExitCode> {
    execute(&fmn_cli::parse::<Cli>())
}

pub fn execute(cli: &Cli) -> Result<ExitCode> {
    fmn_core::tune_for_tensors();
    let output = &cli.output;
    match &cli.command {
        Command::Render(a) => render(a, output),
        Command::Judge(a) => judge(a, output),
        Command::TrainJudge(a) => train_judge(a, output),
        Command::Train(a) => train_model(a, output),
        Command::Quality(a) => quality(a, output),
        Command::TrainSegmenter(a) => train_segmenter(a, output),
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

fn render(a: &RenderArgs, output: &OutputArgs) -> Result<ExitCode> {
    let bar = output.bar(a.count as u64, "rendering");
    let manifest = dataset::render_set(&a.out, a.count, a.seed, a.only, |i| {
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    if output.json {
        let summary = RenderSummary {
            out: &a.out,
            manifest: a.out.join(MANIFEST),
            count: manifest.count,
            seed: a.seed,
            only: a.only,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if output.summary() {
        eprintln!(
            "rendered {} images into {}",
            manifest.count,
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
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

fn judge(a: &JudgeArgs, output: &OutputArgs) -> Result<ExitCode> {
    let files = fmn_core::images::collect_images(&a.images)?;
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
    let verdicts = judge.judge_batch(&images)?;
    if output.json {
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
    } else if !output.quiet {
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

fn train_judge(a: &TrainJudgeArgs, output: &OutputArgs) -> Result<ExitCode> {
    if a.steps == 0 || a.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    let _lock = fmn_core::OutputLock::acquire(&a.out())?;
    let opts = train::TrainOptions {
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        quiet: output.quiet,
        ..train::TrainOptions::default()
    };
    let (judge, report) = train::train(&opts)?;
    let command = format!(
        "fmn-toy train-judge --seed {} --steps {} --batch {} --lr {}",
        a.seed, a.steps, a.batch, a.lr
    );
    let out = a.out();
    train::save(&judge, &out, &[("command", command)])
        .with_context(|| format!("cannot write {}", out.display()))?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if output.summary() {
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
            out.display()
        );
        line("clean held-out renders", &report.clean);
        line("degraded held-out renders", &report.degraded);
    }
    Ok(ExitCode::SUCCESS)
}

/// `fmn-toy train`'s settings: the defaults, the `--config` file's keys, the flags given.
fn train_settings(a: &ModelTrainArgs) -> Result<crate::train::TrainSettings> {
    let settings: crate::train::TrainSettings =
        fmn_core::config::merge(a.config.as_deref(), &a.flags())?;
    if settings.renders == 0 || settings.checkpoint_every == 0 {
        bail!("--renders and --checkpoint-every must be at least 1");
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
    Ok(settings)
}

fn train_model(a: &ModelTrainArgs, output: &OutputArgs) -> Result<ExitCode> {
    let settings = train_settings(a)?;
    // Held for the whole run: its checkpoints and the model folder are this run's alone.
    let _lock = fmn_core::OutputLock::acquire(&a.out())?;
    if settings.batch_parts > 1 {
        fmn_core::allocator::share_one_arena();
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            // Read by candle at each matrix product: the batch parts are the parallelism.
            std::env::set_var("RAYON_NUM_THREADS", "1");
        }
    }
    let spec = SceneSpec::default();
    let examples: Vec<crate::train::Example> = (0..settings.renders as u64)
        .map(|i| {
            let (scene, caption) = dataset::draw(settings.seed, i, &spec);
            let (image, mask) = fmn_toy_world::render(&scene);
            crate::train::Example {
                image,
                mask,
                caption,
            }
        })
        .collect();
    let out = a.out();
    let report = crate::train::train(
        &settings,
        &examples,
        &a.tokenizer(),
        &a.checkpoints(),
        &out,
        output.quiet,
    )?;
    if output.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if output.summary() {
        eprintln!(
            "wrote {} (VAE {:.0} s, final reconstruction MSE {:.4}; UNet {:.0} s, final loss {:.4}; decoder {:.0} s, final weighted MSE {:.4})",
            out.display(),
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

fn quality(a: &QualityArgs, output: &OutputArgs) -> Result<ExitCode> {
    let dir = a.model.path();
    let sd = a
        .model
        .open()
        .and_then(|source| {
            fmn_sd::sample::pipeline::StableDiffusion::load_source(
                &source,
                &candle_core::Device::Cpu,
                candle_core::DType::F32,
                &[],
            )
        })
        .with_context(|| format!("cannot load the model {}", dir.display()))?;
    let judge = Judge::load_default()?;
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
    let bar = output.bar(34, "prompts");
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
    if output.json {
        let mut summary = serde_json::to_value(&report)?;
        summary.as_object_mut().map(|m| m.remove("prompts"));
        println!("{summary}");
    } else if output.summary() {
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

/// `train.json` beside the exported segmenter.
#[derive(Serialize)]
struct SegmenterTrainRecord {
    config: segmenter::TrainConfig,
    training_data: String,
    training_images: usize,
    parameters: usize,
    seconds: f64,
    final_loss: f32,
    threads: usize,
    holdout_images: Option<usize>,
    holdout_mean_iou_candle: Option<f64>,
}

fn train_segmenter(a: &SegmenterTrainArgs, output: &OutputArgs) -> Result<ExitCode> {
    use fmn_toy_world::render_folder::{load_render_folder, render_samples};
    let _lock = fmn_core::OutputLock::acquire(&a.out())?;
    if a.threads > 0 {
        // Read by candle when its thread pool first starts, which is later than this.
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", a.threads.to_string());
    }
    let samples = match &a.data {
        Some(d) => load_render_folder(d).context("training renders")?,
        None if a.renders == 0 => bail!("--renders must be at least 1"),
        None => render_samples(a.render_seed, a.renders),
    };
    let holdout = match &a.holdout {
        Some(d) => Some(load_render_folder(d).context("held-out renders")?),
        None if a.holdout_renders == 0 => None,
        None => Some(render_samples(a.holdout_seed, a.holdout_renders)),
    };
    let source = match &a.data {
        Some(d) => format!("the renders in {}", d.display()),
        None => format!("fmn-toy renders 0..{} of seed {}", a.renders, a.render_seed),
    };
    let cfg = segmenter::TrainConfig {
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        ..Default::default()
    };
    let bar = output.bar(cfg.steps as u64, "train");
    let start = std::time::Instant::now();
    let mut last = f32::NAN;
    let net = segmenter::train(&samples, &cfg, |step, loss| {
        last = loss;
        bar.set_position(step as u64);
        if step % 100 == 0 && !output.quiet {
            bar.suspend(|| {
                eprintln!(
                    "step {step}: loss {loss:.4} ({:.0}s)",
                    start.elapsed().as_secs_f64()
                )
            });
        }
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let iou = match &holdout {
        Some(h) => Some(segmenter::evaluate(&net, h)?),
        None => None,
    };
    let record = SegmenterTrainRecord {
        config: cfg.clone(),
        training_data: source.clone(),
        training_images: samples.len(),
        parameters: net.parameter_count(),
        seconds,
        final_loss: last,
        threads: candle_core::utils::get_num_threads(),
        holdout_images: holdout.as_ref().map(Vec::len),
        holdout_mean_iou_candle: iou,
    };
    let note = format!(
        "trained by `fmn-toy train-segmenter` on {source}, {} steps, seed {}",
        cfg.steps, cfg.seed
    );
    let out = a.out();
    let path = segmenter::export(&net, &out, &cfg, &note)?;
    let record_path = out.join("train.json");
    fmn_core::write_json_atomic(&record_path, &record)
        .with_context(|| record_path.display().to_string())?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else if output.summary() {
        eprintln!(
            "wrote {} ({} parameters, {seconds:.0}s{})",
            path.display(),
            net.parameter_count(),
            iou.map(|i| format!(", held-out mean IoU {i:.4} (candle)"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<crate::train::TrainSettings> {
        let cli = Cli::try_parse_from([&["fmn-toy", "train"], args].concat())?;
        match &cli.command {
            Command::Train(a) => train_settings(a),
            _ => bail!("not train"),
        }
    }

    #[test]
    fn train_settings_are_defaults_then_config_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("c.yaml");
        std::fs::write(&config, "seed: 5\nrenders: 40\nzero_terminal_snr: true\n").unwrap();
        let config = config.to_str().unwrap();
        let defaults = crate::train::TrainSettings::default();

        let from_file = settings(&["--config", config]).unwrap();
        assert_eq!((from_file.seed, from_file.renders), (5, 40));
        assert!(from_file.zero_terminal_snr);
        assert_eq!(from_file.unet_steps, defaults.unet_steps);

        let flagged = settings(&[
            "--config",
            config,
            "--renders",
            "7",
            "--no-zero-terminal-snr",
        ]);
        let flagged = flagged.unwrap();
        assert_eq!((flagged.seed, flagged.renders), (5, 7));
        assert!(!flagged.zero_terminal_snr);
        // The last of --X / --no-X wins.
        let last = settings(&["--no-zero-terminal-snr", "--zero-terminal-snr"]).unwrap();
        assert!(last.zero_terminal_snr);
        assert_eq!(settings(&[]).unwrap(), defaults);

        std::fs::write(dir.path().join("bad.yaml"), "sead: 1\n").unwrap();
        let bad = dir.path().join("bad.yaml");
        let err = settings(&["--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(format!("{err:#}").contains("bad.yaml"), "{err:#}");
    }

    #[test]
    fn path_defaults_do_not_depend_on_the_current_folder() {
        let cli = Cli::try_parse_from(["fmn-toy", "train"]).unwrap();
        let Command::Train(a) = &cli.command else {
            panic!("not train");
        };
        assert!(a.out().is_absolute() && a.out().ends_with("toy-model"));
        assert!(a.checkpoints().ends_with("toy-model.ckpt"));
        assert!(a.tokenizer().ends_with("clip-tokenizer"));
        let cli = Cli::try_parse_from(["fmn-toy", "train", "-o", "/tmp/m"]).unwrap();
        let Command::Train(a) = &cli.command else {
            panic!("not train");
        };
        assert_eq!(a.checkpoints(), PathBuf::from("/tmp/m.ckpt"));
    }
}
