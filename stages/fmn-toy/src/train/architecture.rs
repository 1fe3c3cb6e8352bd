//! The toy model's architecture, as the `config.json` files of a diffusers folder.
//!
//! Sizes follow what a PyTorch prototype of the toy world needed on a 2-core CPU: a VAE with
//! channels 16/32/64 (64×64 images ↔ 16×16×4 latents), a ~1.5 M-parameter UNet with channels
//! 32/64/64 and a 2-layer, 64-wide CLIP text encoder over the real CLIP vocabulary.
//! The UNet's transformer blocks sit at 8×8 and 4×4 only — none at 16×16, as SDXL leaves its
//! highest resolution without attention: the training step fell from 1.34 s to 0.94 s (batch 32,
//! two threads), and the model trained in the hour met the quality bar (BENCHMARKS.md#toy-unet-step-no-attention-at-16x16,
//! BENCHMARKS.md#toy-model-quality-bar).
use fmn_sd::io::sampling_defaults::SamplingDefaults;
use serde_json::{json, Value};

pub const IMAGE_SIZE: usize = 64;
pub const LATENT_SIZE: usize = 16;
pub const TEXT_WIDTH: usize = 64;
pub const CLIP_VOCAB: usize = 49408;

pub fn unet_config() -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.42.1",
        "sample_size": LATENT_SIZE,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "cross_attention_dim": TEXT_WIDTH,
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "use_linear_projection": false,
        "upcast_attention": false
    })
}

pub fn vae_config(scaling_factor: f64) -> Value {
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "act_fn": "silu",
        "sample_size": IMAGE_SIZE,
        "scaling_factor": scaling_factor
    })
}

pub fn text_encoder_config() -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": CLIP_VOCAB,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 4 * TEXT_WIDTH,
        "projection_dim": TEXT_WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
        "torch_dtype": "float32"
    })
}

/// Stable Diffusion 1.x's training schedule, sampled with DDIM by default; with
/// `zero_terminal_snr`, rescaled to zero terminal SNR with velocity prediction and trailing
/// timesteps (`TrainSettings::zero_terminal_snr`).
pub fn scheduler_config(zero_terminal_snr: bool) -> Value {
    let mut cfg = json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": false,
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading"
    });
    if zero_terminal_snr {
        cfg["rescale_betas_zero_snr"] = json!(true);
        cfg["prediction_type"] = json!("v_prediction");
        cfg["timestep_spacing"] = json!("trailing");
    }
    cfg
}

/// What `fmn-sample` uses when not told (`sampling_defaults.json`). A velocity model's guided
/// prediction overshoots at diffusers' 7.5: the committed model drew bob on 1 of 8 seeds at 7.5
/// and on 8 of 8 at 4 (`fmn-toy quality`, BENCHMARKS.md#toy-model-quality-bar).
pub fn sampling_defaults(zero_terminal_snr: bool) -> SamplingDefaults {
    SamplingDefaults {
        guidance_scale: zero_terminal_snr.then_some(4.0),
    }
}

pub fn model_index() -> Value {
    json!({
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

pub fn tokenizer_config() -> Value {
    json!({
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": true,
        "errors": "replace"
    })
}
