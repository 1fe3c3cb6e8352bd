//! Checkpoint key names of the original single-file layout (CompVis LDM, as AUTOMATIC1111 and
//! ComfyUI save it) mapped to the diffusers names our modules use, as diffusers'
//! `loaders/single_file_utils.py` (0.42) converts them:
//! - UNet `model.diffusion_model.*`: `input_blocks.{i}` / `middle_block.{k}` / `output_blocks.{i}`
//!   regrouped into `down_blocks` / `mid_block` / `up_blocks`, resnet layers renamed;
//! - VAE `first_stage_model.*`: `down.{i}.block.{j}` → `down_blocks.{i}.resnets.{j}`, decoder
//!   `up.{i}` in reverse order, mid-block attention as 1×1 convolutions (squeezed to matrices);
//! - SD 1.x text encoder `cond_stage_model.transformer.*`: already transformers' CLIP names;
//! - SD 2.x text encoder `cond_stage_model.model.*` (OpenCLIP): `resblocks.{i}` with one fused
//!   `in_proj` for q/k/v, of which only the first `num_hidden_layers` blocks are used (SD 2 takes
//!   the penultimate layer's output).

/// How a diffusers tensor is taken from its checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The tensor as it is.
    Whole,
    /// A 1×1 convolution kernel `[O, I, 1, 1]` (or `[O, I, 1]`) read as the matrix `[O, I]`.
    Squeeze,
    /// Rows `part·n/3 .. (part+1)·n/3` of a fused q/k/v projection (`part` 0, 1, 2).
    Third(usize),
}

/// One diffusers tensor made from a checkpoint tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// `unet`, `vae` or `text_encoder`.
    pub component: &'static str,
    pub name: String,
    pub take: Take,
}

/// What the mapping needs to know of the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub text: TextLayout,
    /// Resnets per UNet down block (`layers_per_block`).
    pub unet_layers_per_block: usize,
    /// Number of VAE decoder up blocks.
    pub vae_up_blocks: usize,
    /// Transformer layers of the text encoder that are used (`num_hidden_layers`).
    pub text_layers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayout {
    /// transformers CLIP under `cond_stage_model.transformer.` (SD 1.x).
    Clip,
    /// OpenCLIP under `cond_stage_model.model.` (SD 2.x).
    OpenClip,
}

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// The diffusers tensors made from checkpoint tensor `key`: none for tensors no module uses
/// (EMA copies, the noise schedule's buffers, OpenCLIP's last block and projection, ...); an
/// error for a key under a model prefix that no rule knows (an architecture this is not).
pub fn map_key(key: &str, layout: &Layout) -> Result<Vec<Mapped>, String> {
    let one = |component, name: String, take| {
        Ok(vec![Mapped {
            component,
            name,
            take,
        }])
    };
    if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
        let name = unet_name(rest, layout.unet_layers_per_block)
            .ok_or_else(|| format!("`{key}` is not part of a Stable Diffusion 1.x/2.x UNet"))?;
        return one("unet", name, Take::Whole);
    }
    if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
        let (name, take) = vae_name(rest, layout.vae_up_blocks)
            .ok_or_else(|| format!("`{key}` is not part of a Stable Diffusion VAE"))?;
        return one("vae", name, take);
    }
    match layout.text {
        TextLayout::Clip => {
            if let Some(rest) = key.strip_prefix(CLIP_PREFIX) {
                let name = if rest.starts_with("text_model.") {
                    rest.to_string()
                } else {
                    format!("text_model.{rest}")
                };
                if name.ends_with(".position_ids") {
                    return Ok(Vec::new());
                }
                return one("text_encoder", name, Take::Whole);
            }
        }
        TextLayout::OpenClip => {
            if let Some(rest) = key.strip_prefix(OPEN_CLIP_PREFIX) {
                return open_clip_names(rest, layout.text_layers)
                    .ok_or_else(|| format!("`{key}` is not part of an OpenCLIP text encoder"));
            }
        }
    }
    Ok(Vec::new())
}

fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

fn unet_name(rest: &str, layers: usize) -> Option<String> {
    const TOP: [(&str, &str); 5] = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    for (old, new) in TOP {
        if let Some(param) = rest.strip_prefix(old) {
            return leaf(param).map(|p| format!("{new}{p}"));
        }
    }
    // `layers` may come from a config file: a count past `usize::MAX - 1` maps nothing.
    let per_block = layers.checked_add(1)?;
    if let Some(s) = rest.strip_prefix("input_blocks.") {
        let (i, s) = split_index(s)?;
        let (j, s) = split_index(s)?;
        if i == 0 {
            return None;
        }
        let (b, l) = ((i - 1) / per_block, (i - 1) % per_block);
        return match j {
            0 => match s.strip_prefix("op.") {
                Some(param) => Some(format!(
                    "down_blocks.{b}.downsamplers.0.conv.{}",
                    leaf(param)?
                )),
                None => Some(format!("down_blocks.{b}.resnets.{l}.{}", unet_resnet(s)?)),
            },
            1 => Some(format!("down_blocks.{b}.attentions.{l}.{s}")),
            _ => None,
        };
    }
    if let Some(s) = rest.strip_prefix("middle_block.") {
        let (k, s) = split_index(s)?;
        return match k {
            0 | 2 => Some(format!("mid_block.resnets.{}.{}", k / 2, unet_resnet(s)?)),
            1 => Some(format!("mid_block.attentions.0.{s}")),
            _ => None,
        };
    }
    if let Some(s) = rest.strip_prefix("output_blocks.") {
        let (i, s) = split_index(s)?;
        let (j, s) = split_index(s)?;
        let (b, l) = (i / per_block, i % per_block);
        let upsampler = |s: &str| {
            let param = s.strip_prefix("conv.")?;
            Some(format!("up_blocks.{b}.upsamplers.0.conv.{}", leaf(param)?))
        };
        return match j {
            0 => Some(format!("up_blocks.{b}.resnets.{l}.{}", unet_resnet(s)?)),
            1 if s.starts_with("conv.") => upsampler(s),
            1 => Some(format!("up_blocks.{b}.attentions.{l}.{s}")),
            2 => upsampler(s),
            _ => None,
        };
    }
    None
}

/// `weight` or `bias` (the last part of a parameter name).
fn leaf(param: &str) -> Option<&str> {
    matches!(param, "weight" | "bias").then_some(param)
}

fn unet_resnet(s: &str) -> Option<String> {
    const RENAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    RENAMES.iter().find_map(|(old, new)| {
        let param = s.strip_prefix(old)?;
        leaf(param).map(|p| format!("{new}{p}"))
    })
}

fn vae_name(rest: &str, up_blocks: usize) -> Option<(String, Take)> {
    let whole = |n: String| Some((n, Take::Whole));
    for top in ["quant_conv.", "post_quant_conv."] {
        if let Some(param) = rest.strip_prefix(top) {
            return whole(format!("{top}{}", leaf(param)?));
        }
    }
    let (part, s) = rest.split_once('.')?;
    if part != "encoder" && part != "decoder" {
        return None;
    }
    for (old, new) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("norm_out.", "conv_norm_out."),
    ] {
        if let Some(param) = s.strip_prefix(old) {
            return whole(format!("{part}.{new}{}", leaf(param)?));
        }
    }
    if let Some(s) = s.strip_prefix("mid.") {
        for (old, k) in [("block_1.", 0), ("block_2.", 1)] {
            if let Some(s) = s.strip_prefix(old) {
                return whole(format!("{part}.mid_block.resnets.{k}.{}", vae_resnet(s)?));
            }
        }
        let s = s.strip_prefix("attn_1.")?;
        let (layer, param) = s.split_once('.')?;
        let param = leaf(param)?;
        let (new, take) = match layer {
            "norm" => ("group_norm", Take::Whole),
            "q" => ("to_q", Take::Squeeze),
            "k" => ("to_k", Take::Squeeze),
            "v" => ("to_v", Take::Squeeze),
            "proj_out" => ("to_out.0", Take::Squeeze),
            _ => return None,
        };
        let take = if param == "bias" { Take::Whole } else { take };
        return Some((format!("{part}.mid_block.attentions.0.{new}.{param}"), take));
    }
    let (blocks, diffusers_blocks) = if part == "encoder" {
        ("down.", "down_blocks")
    } else {
        ("up.", "up_blocks")
    };
    let s = s.strip_prefix(blocks)?;
    let (i, s) = split_index(s)?;
    let b = if part == "encoder" {
        i
    } else {
        up_blocks.checked_sub(i.checked_add(1)?)?
    };
    if let Some(s) = s.strip_prefix("block.") {
        let (j, s) = split_index(s)?;
        return whole(format!(
            "{part}.{diffusers_blocks}.{b}.resnets.{j}.{}",
            vae_resnet(s)?
        ));
    }
    let sampler = if part == "encoder" {
        ("downsample.conv.", "downsamplers")
    } else {
        ("upsample.conv.", "upsamplers")
    };
    let param = s.strip_prefix(sampler.0)?;
    whole(format!(
        "{part}.{diffusers_blocks}.{b}.{}.0.conv.{}",
        sampler.1,
        leaf(param)?
    ))
}

fn vae_resnet(s: &str) -> Option<String> {
    let (layer, param) = s.split_once('.')?;
    let layer = match layer {
        "norm1" | "conv1" | "norm2" | "conv2" => layer,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{layer}.{}", leaf(param)?))
}

fn open_clip_names(rest: &str, text_layers: usize) -> Option<Vec<Mapped>> {
    let mapped = |name: String, take| Mapped {
        component: "text_encoder",
        name,
        take,
    };
    let single = |name: String| Some(vec![mapped(name, Take::Whole)]);
    match rest {
        "token_embedding.weight" => {
            return single("text_model.embeddings.token_embedding.weight".into())
        }
        "positional_embedding" => {
            return single("text_model.embeddings.position_embedding.weight".into())
        }
        "ln_final.weight" | "ln_final.bias" => {
            let param = rest.trim_start_matches("ln_final.");
            return single(format!("text_model.final_layer_norm.{param}"));
        }
        "text_projection" | "logit_scale" | "attn_mask" => return Some(Vec::new()),
        _ => {}
    }
    let s = rest.strip_prefix("transformer.resblocks.")?;
    let (i, s) = split_index(s)?;
    let base = format!("text_model.encoder.layers.{i}");
    let names = match s {
        "attn.in_proj_weight" | "attn.in_proj_bias" => {
            let param = if s.ends_with("weight") {
                "weight"
            } else {
                "bias"
            };
            ["q_proj", "k_proj", "v_proj"]
                .iter()
                .enumerate()
                .map(|(part, p)| mapped(format!("{base}.self_attn.{p}.{param}"), Take::Third(part)))
                .collect()
        }
        _ => {
            let (layer, param) = s.rsplit_once('.')?;
            let layer = match layer {
                "ln_1" => "layer_norm1",
                "ln_2" => "layer_norm2",
                "mlp.c_fc" => "mlp.fc1",
                "mlp.c_proj" => "mlp.fc2",
                "attn.out_proj" => "self_attn.out_proj",
                _ => return None,
            };
            vec![mapped(
                format!("{base}.{layer}.{}", leaf(param)?),
                Take::Whole,
            )]
        }
    };
    // Blocks past the used layers (SD 2's last one) are recognised but not loaded.
    Some(if i < text_layers { names } else { Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD15: Layout = Layout {
        text: TextLayout::Clip,
        unet_layers_per_block: 2,
        vae_up_blocks: 4,
        text_layers: 12,
    };

    fn name(key: &str) -> String {
        let m = map_key(key, &SD15).unwrap();
        assert_eq!(m.len(), 1, "{key}");
        m[0].name.clone()
    }

    // Pairs from the SD 1.5 single file and diffusers' SD 1.5 folder (the conversion table of
    // diffusers' `convert_original_stable_diffusion_to_diffusers.py`).
    #[test]
    fn sd15_unet_keys() {
        for (ldm, diffusers) in [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.2.weight",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.emb_layers.1.weight",
                "down_blocks.3.resnets.1.time_emb_proj.weight",
            ),
            (
                "middle_block.2.out_layers.3.bias",
                "mid_block.resnets.1.conv2.bias",
            ),
            (
                "middle_block.1.proj_out.weight",
                "mid_block.attentions.0.proj_out.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.0.out_layers.0.weight",
                "up_blocks.3.resnets.2.norm2.weight",
            ),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("out.0.weight", "conv_norm_out.weight"),
        ] {
            assert_eq!(name(&format!("{UNET_PREFIX}{ldm}")), diffusers, "{ldm}");
        }
    }

    #[test]
    fn sd15_vae_keys() {
        for (ldm, diffusers) in [
            (
                "encoder.down.3.block.1.conv2.weight",
                "encoder.down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "encoder.down.0.downsample.conv.weight",
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "decoder.up.3.block.0.nin_shortcut.bias",
                "decoder.up_blocks.0.resnets.0.conv_shortcut.bias",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            ("encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            assert_eq!(name(&format!("{VAE_PREFIX}{ldm}")), diffusers, "{ldm}");
        }
        let q = map_key("first_stage_model.encoder.mid.attn_1.q.weight", &SD15).unwrap();
        assert_eq!(q[0].take, Take::Squeeze);
    }

    #[test]
    fn open_clip_keys() {
        let layout = Layout {
            text: TextLayout::OpenClip,
            text_layers: 23,
            ..SD15
        };
        let fused = map_key(
            "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight",
            &layout,
        )
        .unwrap();
        let got: Vec<_> = fused.iter().map(|m| (m.name.as_str(), m.take)).collect();
        assert_eq!(
            got,
            [
                (
                    "text_model.encoder.layers.22.self_attn.q_proj.weight",
                    Take::Third(0)
                ),
                (
                    "text_model.encoder.layers.22.self_attn.k_proj.weight",
                    Take::Third(1)
                ),
                (
                    "text_model.encoder.layers.22.self_attn.v_proj.weight",
                    Take::Third(2)
                ),
            ]
        );
        assert!(map_key(
            "cond_stage_model.model.transformer.resblocks.23.mlp.c_fc.weight",
            &layout
        )
        .unwrap()
        .is_empty());
        assert!(map_key(
            "cond_stage_model.model.transformer.resblocks.23.bogus.weight",
            &layout
        )
        .is_err());
        assert!(map_key("model.diffusion_model.label_emb.0.0.weight", &layout).is_err());
        assert!(map_key("model_ema.decay", &layout).unwrap().is_empty());
    }

    // Found by fuzzing (fuzz/regressions/single_file): `layers + 1` and `1 + i` overflowed.
    #[test]
    fn extreme_counts_map_nothing() {
        let layout = Layout {
            unet_layers_per_block: usize::MAX,
            ..SD15
        };
        assert!(map_key(
            "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
            &layout
        )
        .is_err());
        let key = format!("{VAE_PREFIX}decoder.up.{}.block.0.conv1.weight", usize::MAX);
        assert!(map_key(&key, &SD15).is_err());
    }
}
