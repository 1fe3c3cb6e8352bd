//! The diffusers configs of a single-file checkpoint, read off its tensor shapes for what the
//! shapes say, and set as Stable Diffusion 1.x / 2.x have them for what they cannot say
//! (attention heads, group-norm groups, the scheduler): the values of the `config.json` files
//! in `runwayml/stable-diffusion-v1-5` and `stabilityai/stable-diffusion-2(-base)`, which is
//! what diffusers' `from_single_file` fetches for these checkpoints.
use super::keys::{TextLayout, CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use crate::sample::scheduler::PredictionType;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Tensor name → shape, of the whole checkpoint.
pub type Shapes = HashMap<String, Vec<usize>>;

/// Looks up a shape, or says which tensor the checkpoint lacks.
fn shape<'a>(shapes: &'a Shapes, key: &str) -> Result<&'a [usize], String> {
    shapes
        .get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| format!("tensor `{key}` is missing"))
}

fn dim(shapes: &Shapes, key: &str, axis: usize) -> Result<usize, String> {
    let s = shape(shapes, key)?;
    s.get(axis).copied().ok_or_else(|| {
        format!(
            "tensor `{key}` has shape {s:?}, expected at least {} dims",
            axis + 1
        )
    })
}

/// The shape of `key`, refused unless it has exactly `N` axes.
fn dims<const N: usize>(shapes: &Shapes, key: &str) -> Result<[usize; N], String> {
    let s = shape(shapes, key)?;
    <[usize; N]>::try_from(s)
        .map_err(|_| format!("tensor `{key}` has shape {s:?}, expected {N} dims"))
}

/// The number of distinct `{prefix}{i}.` indices.
fn count_indices(shapes: &Shapes, prefix: &str) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    for key in shapes.keys() {
        if let Some(rest) = key.strip_prefix(prefix) {
            if let Some(i) = rest.split('.').next().and_then(|i| i.parse::<usize>().ok()) {
                seen.insert(i);
            }
        }
    }
    seen.len()
}

/// Which text encoder the checkpoint holds, i.e. SD 1.x (CLIP) or SD 2.x (OpenCLIP).
pub fn text_layout(shapes: &Shapes) -> Result<TextLayout, String> {
    if shapes.contains_key(&format!("{OPEN_CLIP_PREFIX}token_embedding.weight")) {
        Ok(TextLayout::OpenClip)
    } else if shapes.keys().any(|k| k.starts_with(CLIP_PREFIX)) {
        Ok(TextLayout::Clip)
    } else if shapes.keys().any(|k| k.starts_with("conditioner.")) {
        Err("this looks like an SDXL checkpoint (`conditioner.*` tensors); only Stable Diffusion 1.x/2.x are supported".into())
    } else {
        Err(format!(
            "no text encoder: expected `{CLIP_PREFIX}*` (SD 1.x) or `{OPEN_CLIP_PREFIX}*` (SD 2.x) tensors"
        ))
    }
}

/// `unet/config.json` as diffusers writes it for SD 1.x / 2.x, with the shapes of this file.
pub fn unet_config(shapes: &Shapes, text: TextLayout, v_prediction: bool) -> Result<Value, String> {
    let p = |k: &str| format!("{UNET_PREFIX}{k}");
    let input_blocks = count_indices(shapes, &p("input_blocks."));
    let downsamplers = (1..input_blocks)
        .filter(|i| shapes.contains_key(&p(&format!("input_blocks.{i}.0.op.weight"))))
        .count();
    let blocks = downsamplers + 1;
    if input_blocks < 2 || !input_blocks.is_multiple_of(blocks) {
        return Err(format!(
            "UNet: {input_blocks} input blocks with {downsamplers} downsamplers is not an SD 1.x/2.x layout"
        ));
    }
    let layers = input_blocks / blocks - 1;
    let first_of = |b: usize| 1 + b * (layers + 1);
    let mut channels = Vec::new();
    let mut attention = Vec::new();
    for b in 0..blocks {
        let i = first_of(b);
        channels.push(dim(
            shapes,
            &p(&format!("input_blocks.{i}.0.out_layers.3.weight")),
            0,
        )?);
        attention.push(shapes.contains_key(&p(&format!("input_blocks.{i}.1.proj_in.weight"))));
    }
    let first_attn = (0..blocks)
        .find(|&b| attention[b])
        .map(|b| format!("input_blocks.{}.1.", first_of(b)))
        .unwrap_or_else(|| "middle_block.1.".into());
    let cross = dim(
        shapes,
        &p(&format!(
            "{first_attn}transformer_blocks.0.attn2.to_k.weight"
        )),
        1,
    )?;
    let linear = shape(shapes, &p(&format!("{first_attn}proj_in.weight")))?.len() == 2;
    let depth = count_indices(shapes, &p(&format!("{first_attn}transformer_blocks.")));
    let [_, in_channels, _, _] = dims::<4>(shapes, &p("input_blocks.0.0.weight"))?;
    let out_channels = dim(shapes, &p("out.2.weight"), 0)?;
    let down: Vec<&str> = attention
        .iter()
        .map(|&a| {
            if a {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = attention
        .iter()
        .rev()
        .map(|&a| if a { "CrossAttnUpBlock2D" } else { "UpBlock2D" })
        .collect();
    // SD 1.x: 8 heads everywhere; SD 2.x: 64 channels per head.
    let heads = match text {
        TextLayout::Clip => json!(8),
        TextLayout::OpenClip => json!(channels.iter().map(|c| c / 64).collect::<Vec<_>>()),
    };
    Ok(json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": if v_prediction { 96 } else { 64 },
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": cross,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depth.max(1),
        "upcast_attention": text == TextLayout::OpenClip && v_prediction,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "center_input_sample": false,
    }))
}

/// `vae/config.json` of SD 1.x / 2.x with the shapes of this file.
pub fn vae_config(shapes: &Shapes, v_prediction: bool) -> Result<Value, String> {
    let p = |k: &str| format!("{VAE_PREFIX}{k}");
    let blocks = count_indices(shapes, &p("encoder.down."));
    if blocks == 0 {
        return Err(format!("VAE: no `{VAE_PREFIX}encoder.down.*` tensors"));
    }
    let channels = (0..blocks)
        .map(|i| {
            dim(
                shapes,
                &p(&format!("encoder.down.{i}.block.0.conv1.weight")),
                0,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({
        "_class_name": "AutoencoderKL",
        "in_channels": dim(shapes, &p("encoder.conv_in.weight"), 1)?,
        "out_channels": dim(shapes, &p("decoder.conv_out.weight"), 0)?,
        "down_block_types": vec!["DownEncoderBlock2D"; blocks],
        "up_block_types": vec!["UpDecoderBlock2D"; blocks],
        "block_out_channels": channels,
        "layers_per_block": count_indices(shapes, &p("encoder.down.0.block.")),
        "latent_channels": dim(shapes, &p("post_quant_conv.weight"), 0)?,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "sample_size": if v_prediction { 768 } else { 512 },
        "scaling_factor": 0.18215,
    }))
}

/// `text_encoder/config.json` of SD 1.x (CLIP ViT-L/14) or SD 2.x (OpenCLIP ViT-H/14, used up
/// to its penultimate layer), with the shapes of this file.
pub fn text_encoder_config(shapes: &Shapes, text: TextLayout) -> Result<Value, String> {
    let (hidden, vocab, positions, intermediate, layers, act) = match text {
        TextLayout::Clip => {
            let root = if shapes
                .keys()
                .any(|k| k.starts_with(&format!("{CLIP_PREFIX}text_model.")))
            {
                format!("{CLIP_PREFIX}text_model.")
            } else {
                CLIP_PREFIX.to_string()
            };
            let [vocab, hidden] =
                dims::<2>(shapes, &format!("{root}embeddings.token_embedding.weight"))?;
            (
                hidden,
                vocab,
                dim(
                    shapes,
                    &format!("{root}embeddings.position_embedding.weight"),
                    0,
                )?,
                dim(shapes, &format!("{root}encoder.layers.0.mlp.fc1.weight"), 0)?,
                count_indices(shapes, &format!("{root}encoder.layers.")),
                "quick_gelu",
            )
        }
        TextLayout::OpenClip => {
            let p = |k: &str| format!("{OPEN_CLIP_PREFIX}{k}");
            let [vocab, hidden] = dims::<2>(shapes, &p("token_embedding.weight"))?;
            let blocks = count_indices(shapes, &p("transformer.resblocks."));
            (
                hidden,
                vocab,
                dim(shapes, &p("positional_embedding"), 0)?,
                dim(shapes, &p("transformer.resblocks.0.mlp.c_fc.weight"), 0)?,
                open_clip_layers(hidden, blocks)?,
                "gelu",
            )
        }
    };
    if !hidden.is_multiple_of(64) {
        return Err(format!(
            "text encoder width {hidden} is not a multiple of 64 (the head size of SD's text encoders); give --model-config"
        ));
    }
    Ok(json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "projection_dim": if text == TextLayout::Clip { 768 } else { 512 },
    }))
}

/// Width and depth of the one OpenCLIP text tower SD 2.x uses (ViT-H/14).
const OPEN_CLIP_VIT_H: (usize, usize) = (1024, 24);

/// Text-encoder layers of an OpenCLIP tower with `blocks` resblocks in the file, as diffusers
/// decides: SD 2.x uses the penultimate layer of the standard 24-block ViT-H/14 tower, so 23
/// layers whether the file holds all 24 blocks (the original checkpoints) or only the 23 used
/// (what diffusers' diffusers→original conversion writes). Diffusers takes that depth from SD 2's
/// own `text_encoder/config.json` and skips `resblocks.23`. Any other tower is ambiguous: the
/// file cannot say whether its last block is the unused one.
pub fn open_clip_layers(width: usize, blocks: usize) -> Result<usize, String> {
    let (vit_h_width, vit_h_blocks) = OPEN_CLIP_VIT_H;
    if width != vit_h_width {
        return Err(format!(
            "OpenCLIP text encoder {width} wide with {blocks} blocks is not SD 2's ViT-H/14 \
             ({vit_h_width} wide, {vit_h_blocks} blocks): how many of its blocks are used is \
             ambiguous; give --model-config with its text_encoder/config.json"
        ));
    }
    let used = vit_h_blocks - 1;
    if blocks != used && blocks != vit_h_blocks {
        return Err(format!(
            "OpenCLIP ViT-H/14 text encoder with {blocks} blocks: expected {vit_h_blocks} \
             (the original checkpoints) or {used} (the used ones); give --model-config"
        ));
    }
    Ok(used)
}

/// SD's training noise schedule with the PNDM sampler of SD 1.5's folder
/// (`scheduler/scheduler_config.json`), the prediction type as given.
pub fn scheduler_config(prediction: PredictionType) -> Value {
    json!({
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": false,
        "skip_prk_steps": true,
        "steps_offset": 1,
        "clip_sample": false,
        "timestep_spacing": "leading",
        "prediction_type": prediction.as_str(),
    })
}
