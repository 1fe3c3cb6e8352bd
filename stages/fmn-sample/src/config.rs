//! `fmn-sample --config FILE.yaml`: any option under its long name with `_` (`num_images: 8`,
//! `prompt: [..]`); an option given on the command line wins over the file.
use crate::Args;
use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    model: Option<PathBuf>,
    patch: Option<Vec<PathBuf>>,
    embedding: Option<Vec<PathBuf>>,
    prompt: Option<Vec<String>>,
    prompt_file: Option<PathBuf>,
    negative_prompt: Option<String>,
    scheduler: Option<String>,
    steps: Option<usize>,
    guidance: Option<f64>,
    guidance_rescale: Option<f64>,
    width: Option<usize>,
    height: Option<usize>,
    seed: Option<u64>,
    num_images: Option<usize>,
    attention_steps: Option<Vec<usize>>,
    device: Option<String>,
    dtype: Option<fmn_sd::device::ComputeDType>,
}

impl Args {
    /// Parses the command line and, with `--config`, fills every option not given there from
    /// the file (unknown keys are an error naming the key and the file).
    pub fn parse_with_config() -> Result<Self> {
        let matches = Args::command().get_matches();
        let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        args.with_config(&matches)
    }

    fn with_config(mut self, matches: &ArgMatches) -> Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let cfg: SampleConfig = fmn_core::load_yaml(&path)?;
        let free = |id: &str| matches.value_source(id) != Some(ValueSource::CommandLine);
        if free("model") && cfg.model.is_some() {
            self.model.model = cfg.model;
        }
        if let (true, Some(v)) = (free("patch"), cfg.patch) {
            self.patch = v;
        }
        if let (true, Some(v)) = (free("embedding"), cfg.embedding) {
            self.embedding = v;
        }
        if let (true, Some(v)) = (free("prompt"), cfg.prompt) {
            self.prompt = v;
        }
        if free("prompt_file") && cfg.prompt_file.is_some() {
            self.prompt_file = cfg.prompt_file;
        }
        if let (true, Some(v)) = (free("negative_prompt"), cfg.negative_prompt) {
            self.negative_prompt = v;
        }
        if let (true, Some(v)) = (free("scheduler"), cfg.scheduler) {
            self.scheduler = v
                .parse()
                .with_context(|| format!("{}: `scheduler`", path.display()))?;
        }
        if let (true, Some(v)) = (free("steps"), cfg.steps) {
            self.steps = v;
        }
        if free("guidance") && cfg.guidance.is_some() {
            self.guidance = cfg.guidance;
        }
        if let (true, Some(v)) = (free("guidance_rescale"), cfg.guidance_rescale) {
            self.guidance_rescale = v;
        }
        if free("width") && cfg.width.is_some() {
            self.width = cfg.width;
        }
        if free("height") && cfg.height.is_some() {
            self.height = cfg.height;
        }
        if let (true, Some(v)) = (free("seed"), cfg.seed) {
            self.seed = v;
        }
        if free("num_images") && cfg.num_images.is_some() {
            self.num_images = cfg.num_images;
        }
        if let (true, Some(v)) = (free("attention_steps"), cfg.attention_steps) {
            self.attention_steps = v;
        }
        if let (true, Some(v)) = (free("device"), cfg.device) {
            self.device = v;
        }
        if let (true, Some(v)) = (free("dtype"), cfg.dtype) {
            self.dtype = v;
        }
        Ok(self)
    }
}
