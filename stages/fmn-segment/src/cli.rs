//! The `fmn-segment` command line.
use crate::batch::{segment_folder, FolderJob};
use crate::error::SegmentError;
use crate::preset::Preset;
use crate::runtime::Runtime;
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use fmn_cli::{OrtArgs, OutputArgs, StageArgs};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Concept masks from ONNX segmentation models.
///
/// `fmn-segment --segmenter toy --images DIR --out MASKS_DIR` writes one 8-bit PNG mask per
/// image (same base name), optional overlays and `manifest.json` with each image's coverage.
/// Needs the ONNX Runtime 1.31+ library: `ORT_DYLIB_PATH` or `--ort-lib` (see
/// `scripts/install-onnxruntime.sh`).
#[derive(Debug, Parser)]
#[command(name = "fmn-segment", version, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub segment: SegmentArgs,
    #[command(flatten)]
    pub ort: OrtArgs,
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
    /// List an ONNX model's inputs and outputs (to write a preset for it).
    Inspect {
        #[arg(value_name = "MODEL.onnx")]
        model: PathBuf,
    },
    /// Measure a model's IoU on a folder of renders with masks (`NAME.png` + `masks/NAME.png`).
    Eval(EvalArgs),
}

/// The options of a segmentation run; `segmenter`, `preset`, `overlay`, `batch_size` and
/// `threads` may also come from `--config FILE.yaml` (flags win).
#[derive(Debug, Args, Serialize)]
pub struct SegmentArgs {
    /// A preset name (configs/segment/NAME.yaml), a preset file, or an ONNX file (with
    /// --preset).
    #[arg(long, value_name = "PRESET_OR_ONNX")]
    pub segmenter: Option<String>,
    /// The preset (name or file) for an ONNX --segmenter.
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// Folder of images (.png, .jpg, .jpeg); other files are left alone.
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub images: Option<PathBuf>,
    /// Folder for the masks and manifest.json.
    #[arg(short, long, value_name = "MASKS_DIR")]
    #[serde(skip)]
    pub out: Option<PathBuf>,
    /// Options from a YAML file (`segmenter`, `preset`, `overlay`, `batch_size`, `threads`);
    /// flags override them.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Folder for overlays (the image with its mask tinted in).
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
    /// Images per model run [default: 16].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// ONNX Runtime threads (0: its default) [default: 0].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A segmentation run's settings: defaults < `--config` file < flags.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentSettings {
    pub segmenter: Option<String>,
    pub preset: Option<String>,
    pub overlay: Option<PathBuf>,
    pub batch_size: usize,
    pub threads: usize,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        Self {
            segmenter: None,
            preset: None,
            overlay: None,
            batch_size: 16,
            threads: 0,
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Preset name, preset file, or ONNX file (with --preset).
    #[arg(long, value_name = "PRESET_OR_ONNX", default_value = "toy")]
    pub segmenter: String,
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// Folder of renders with masks/.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Fail (exit 1) if the mean IoU is below this.
    #[arg(long)]
    pub min_iou: Option<f64>,
}

/// Resolves `--segmenter` and `--preset` to a preset and, for an ONNX `--segmenter`, its file.
pub fn resolve_model(
    model: &str,
    preset: Option<&str>,
) -> Result<(Preset, Option<PathBuf>), SegmentError> {
    let is_onnx = model.ends_with(".onnx")
        || (Path::new(model).is_file() && !model.ends_with(".yaml") && !model.ends_with(".yml"));
    if is_onnx {
        let Some(preset) = preset else {
            return Err(SegmentError::Input(format!(
                "--segmenter {model} is an ONNX file: say how to feed it with --preset NAME_OR_FILE (e.g. --preset u2net)"
            )));
        };
        Ok((Preset::find(preset)?, Some(PathBuf::from(model))))
    } else {
        if let Some(p) = preset {
            return Err(SegmentError::Input(format!(
                "--preset {p} goes with an ONNX --segmenter; --segmenter {model} is already a preset"
            )));
        }
        Ok((Preset::find(model)?, None))
    }
}

/// Parses the command line and runs it.
pub fn run() -> Result<ExitCode> {
    execute(&fmn_cli::parse::<Cli>())
}

pub fn execute(cli: &Cli) -> Result<ExitCode> {
    let output = &cli.output;
    match &cli.command {
        None => run_segment(cli, &cli.segment),
        Some(Command::Inspect { model }) => {
            let rt = Runtime::load(cli.ort.ort_lib.as_deref())?;
            let info = rt.inspect(model)?;
            if output.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else if !output.quiet {
                for (what, list) in [("input", &info.inputs), ("output", &info.outputs)] {
                    for i in list {
                        println!(
                            "{what} {} {} {:?}",
                            i.name,
                            i.element,
                            i.shape.clone().unwrap_or_default()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Eval(args)) => run_eval(cli, args),
    }
}

fn run_segment(cli: &Cli, flags: &SegmentArgs) -> Result<ExitCode> {
    let settings: SegmentSettings = fmn_core::config::merge(flags.config.as_deref(), flags)?;
    let (Some(segmenter), Some(images), Some(out)) =
        (&settings.segmenter, &flags.images, &flags.out)
    else {
        bail!("--segmenter (or `segmenter:` in --config), --images and --out are required");
    };
    if settings.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let output = &cli.output;
    let job = FolderJob {
        images: images.clone(),
        masks: out.clone(),
        overlays: settings.overlay.clone(),
        batch_size: settings.batch_size,
        quiet: output.quiet || output.json,
    };
    // Folder mistakes are reported before the runtime or the model is touched.
    crate::batch::check_job(&job)?;
    let _lock = fmn_core::OutputLock::acquire(out)?;
    let (preset, onnx) = resolve_model(segmenter, settings.preset.as_deref())?;
    let rt = Runtime::load(cli.ort.ort_lib.as_deref())?;
    let mut segmenter = rt.open(&preset, onnx.as_deref(), settings.threads)?;
    let start = Instant::now();
    let manifest = segment_folder(&mut segmenter, &job)?;
    if output.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    }
    if manifest.failed > 0 {
        let names: Vec<&str> = manifest.failures.iter().map(|f| f.image.as_str()).collect();
        bail!(
            "{} images failed ({}); the other {} masks are in {}",
            manifest.failed,
            names.join(", "),
            manifest.count,
            out.display()
        );
    }
    if output.summary() {
        eprintln!(
            "{} masks in {} ({:.1}s)",
            manifest.count,
            out.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// IoU of a model's masks against exact masks.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub preset: String,
    pub images: usize,
    /// Mean of per-image IoU.
    pub mean_iou: f64,
    /// Intersection over union summed over all images.
    pub total_iou: f64,
    pub min_iou: f64,
    pub seconds: f64,
}

/// Runs `segmenter` over renders with exact masks and measures IoU.
pub fn evaluate(
    segmenter: &mut crate::Segmenter,
    samples: &[fmn_toy_world::render_folder::Sample],
) -> Result<EvalReport, SegmentError> {
    let start = Instant::now();
    let (mut sum, mut min, mut inter, mut union) = (0.0, f64::INFINITY, 0u64, 0u64);
    for chunk in samples.chunks(64) {
        let refs: Vec<&image::RgbImage> = chunk.iter().map(|s| &s.image).collect();
        let masks = segmenter.segment(&refs)?;
        for (m, s) in masks.iter().zip(chunk) {
            let iou = crate::post::iou(m, &s.mask);
            sum += iou;
            min = min.min(iou);
            for (a, b) in m.as_raw().iter().zip(s.mask.as_raw()) {
                inter += (*a >= 128 && *b >= 128) as u64;
                union += (*a >= 128 || *b >= 128) as u64;
            }
        }
    }
    Ok(EvalReport {
        preset: segmenter.preset().name.clone(),
        images: samples.len(),
        mean_iou: sum / samples.len().max(1) as f64,
        total_iou: if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        },
        min_iou: if samples.is_empty() { 1.0 } else { min },
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn run_eval(cli: &Cli, args: &EvalArgs) -> Result<ExitCode> {
    let samples = fmn_toy_world::render_folder::load_render_folder(&args.images)?;
    let (preset, onnx) = resolve_model(&args.segmenter, args.preset.as_deref())?;
    let rt = Runtime::load(cli.ort.ort_lib.as_deref())?;
    let mut segmenter = rt.open(&preset, onnx.as_deref(), 0)?;
    let report = evaluate(&mut segmenter, &samples)?;
    if cli.output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !cli.output.quiet {
        println!(
            "{}: {} images, mean IoU {:.4}, total IoU {:.4}, min IoU {:.4} ({:.2}s)",
            report.preset,
            report.images,
            report.mean_iou,
            report.total_iou,
            report.min_iou,
            report.seconds
        );
    }
    if let Some(min) = args.min_iou {
        if report.mean_iou < min {
            bail!("mean IoU {:.4} is below --min-iou {min}", report.mean_iou);
        }
    }
    Ok(ExitCode::SUCCESS)
}
