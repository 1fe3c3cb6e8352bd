//! End-to-end parity with diffusers on the tiny SD1-style and SD2-style fixture models
//! (`tests/fixtures/gen/make_sd_fixtures.py`): token ids, the UNet, cross-attention
//! probabilities, full 10-step DDIM / Euler / DPM-Solver++ runs with guidance 7.5, decoding.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_testkit::{fixtures, max_abs, max_abs_diff};

use candle_core::{DType, Device, Tensor};
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::sample::pipeline::{SampleRequest, StableDiffusion};
use fmn_sd::sample::scheduler::SamplerKind;
use std::collections::HashMap;

struct Fixture {
    model: StableDiffusion,
    reference: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

fn load(name: &str) -> Fixture {
    let dev = Device::Cpu;
    let dir = fixtures();
    let model = StableDiffusion::load(&dir.join(name), &dev, DType::F32).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join(format!("{name}-reference.safetensors")), &dev)
            .unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}-reference.json"))).unwrap(),
    )
    .unwrap();
    Fixture {
        model,
        reference,
        meta,
    }
}

impl Fixture {
    fn r(&self, key: &str) -> &Tensor {
        self.reference
            .get(key)
            .unwrap_or_else(|| panic!("reference has no `{key}`"))
    }

    fn prompts(&self) -> Vec<String> {
        let mut p: Vec<String> = self.meta["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        p.push(self.meta["negative_prompt"].as_str().unwrap().to_string());
        p
    }

    fn check_token_ids(&self) {
        let prompts = self.prompts();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let ids = self
            .model
            .token_ids(&refs)
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap();
        assert_eq!(
            ids.to_vec2::<i64>().unwrap(),
            self.r("prompt_ids").to_vec2::<i64>().unwrap()
        );
    }

    fn check_unet(&self) {
        for (sample, t, ctx, out) in [
            ("unet_sample", "unet_timestep", "unet_context", "unet_out"),
            (
                "unet_sample2",
                "unet_timestep2",
                "unet_context",
                "unet_out2",
            ),
        ] {
            let rec = AttentionRecorder::new();
            let got = self
                .model
                .unet
                .forward_with_probe(self.r(sample), self.r(t), self.r(ctx), Some(&rec))
                .unwrap();
            let err = max_abs_diff(&got, self.r(out));
            let scale = max_abs(self.r(out));
            assert!(
                err <= 1e-4 * scale.max(1.0),
                "{out}: max abs error {err} (max |ref| {scale})"
            );
            if out == "unet_out" {
                let records = rec.take();
                assert_eq!(
                    records.len(),
                    self.meta["attn2_modules"].as_array().unwrap().len()
                );
                for rec in records {
                    let path = &rec.path;
                    let err = max_abs_diff(&rec.probs, self.r(&format!("attn_probs/{path}")));
                    assert!(err <= 1e-5, "attn_probs/{path}: max abs error {err}");
                }
            }
        }
    }

    fn run(
        &self,
        sampler: SamplerKind,
        attention_steps: &[usize],
    ) -> fmn_sd::sample::pipeline::SampleOutput {
        self.model
            .sample(
                &SampleRequest {
                    prompt: self.meta["run_prompt"].as_str().unwrap(),
                    negative_prompt: self.meta["negative_prompt"].as_str().unwrap(),
                    sampler,
                    steps: self.meta["num_inference_steps"].as_u64().unwrap() as usize,
                    guidance: self.meta["guidance_scale"].as_f64().unwrap(),
                    guidance_rescale: 0.0,
                    init_noise: self.r("init_latents").clone(),
                    attention_steps,
                    step_seed: 0,
                },
                |_| {},
            )
            .unwrap()
    }

    fn check_runs(&self) {
        for (sampler, key) in [
            (SamplerKind::Ddim, "ddim_latents"),
            (SamplerKind::Euler, "euler_latents"),
            (SamplerKind::DpmPp2m, "dpmpp_latents"),
        ] {
            let steps: &[usize] = if sampler == SamplerKind::Ddim {
                &[0]
            } else {
                &[]
            };
            let out = self.run(sampler, steps);
            let err = max_abs_diff(&out.latents, self.r(key));
            let scale = max_abs(self.r(key));
            eprintln!("{key}: max abs error {err:e}, max |ref| {scale}");
            assert!(
                err <= 1e-3 * scale,
                "{key}: max abs error {err} > 1e-3 × {scale}"
            );
            if sampler == SamplerKind::Ddim {
                assert!(!out.attention.is_empty());
                for (step, rec) in &out.attention {
                    assert_eq!(*step, 0);
                    let path = &rec.path;
                    let err = max_abs_diff(&rec.probs, self.r(&format!("step0_attn/{path}")));
                    assert!(err <= 1e-5, "step0_attn/{path}: max abs error {err}");
                }
                let image = self.model.decode(&out.latents).unwrap();
                let err = max_abs_diff(&image, self.r("ddim_image"));
                eprintln!("ddim_image: max abs error {err:e}");
                assert!(err <= 1.0 / 255.0, "ddim_image: max abs error {err}");
            }
        }
    }
}

#[test]
fn sd1_token_ids_unet_and_attention() {
    let f = load("sd1-tiny");
    f.check_token_ids();
    f.check_unet();
}

#[test]
fn sd1_sampling_runs_match_diffusers() {
    load("sd1-tiny").check_runs();
}

#[test]
fn sd2_token_ids_unet_and_attention() {
    let f = load("sd2-tiny");
    f.check_token_ids();
    f.check_unet();
}

#[test]
fn sd2_sampling_runs_match_diffusers() {
    load("sd2-tiny").check_runs();
}
