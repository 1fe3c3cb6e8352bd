//! Single-file checkpoints (original CompVis / AUTOMATIC1111 layout) built from the tiny
//! fixtures by `tests/fixtures/gen/make_single_file_fixtures.py`, which checked that diffusers'
//! `from_single_file` reads them back into the folders' weights and wrote reference outputs.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor};
use fmn_sd::io::patch::{Concept, Patch};
use fmn_sd::io::single_file::infer;
use fmn_sd::io::single_file::keys::TextLayout;
use fmn_sd::io::single_file::SingleFile;
use fmn_sd::io::source::{ModelSource, SourceOptions};
use fmn_sd::io::tokenizer::ClipTokenizer;
use fmn_sd::sample::pipeline::StableDiffusion;
use fmn_testkit::{fixtures, max_abs_diff, rel_err};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn single(name: &str) -> PathBuf {
    fixtures()
        .join("single-file")
        .join(format!("{name}.safetensors"))
}

fn with_configs(name: &str) -> SourceOptions {
    SourceOptions {
        config_dir: Some(fixtures().join(name)),
        prediction_type: None,
    }
}

fn equal(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims() && max_abs_diff(a, b) == 0.0
}

/// `tests/fixtures/{name}/{component}/config.json` as JSON.
fn folder_config(name: &str, component: &str) -> serde_json::Value {
    let file = fixtures().join(name).join(component).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[test]
fn single_files_give_diffusers_from_single_file_outputs() {
    for name in ["sd1-tiny", "sd2-tiny"] {
        let source = ModelSource::open(&single(name), &with_configs(name)).unwrap();
        let model = StableDiffusion::load_source(&source, &Device::Cpu, DType::F32, &[]).unwrap();
        let r = candle_core::safetensors::load(
            fixtures().join(format!("single-file/{name}-reference.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let ids = model.token_ids(&["a photo of a red circle"]).unwrap();
        let want_ids = r["prompt_ids"].to_dtype(DType::U32).unwrap();
        assert!(equal(&ids, &want_ids), "{name}: token ids");
        let hidden = model.encode_prompts(&["a photo of a red circle"]).unwrap();
        let e_text = rel_err(&hidden, &r["text_hidden"]);
        let out = model
            .unet
            .forward(&r["unet_sample"], &r["unet_timestep"], &r["text_hidden"])
            .unwrap();
        let e_unet = rel_err(&out, &r["unet_out"]);
        let decoded = model.vae.decode(&r["vae_latents"]).unwrap();
        let e_vae = rel_err(&decoded, &r["vae_decoded"]);
        println!("{name}: text {e_text:e}, unet {e_unet:e}, vae {e_vae:e}");
        assert!(e_text < 1e-5 && e_unet < 1e-4 && e_vae < 1e-4, "{name}");
    }
}

/// Every converted tensor is the folder's tensor (diffusers' own names) rounded to fp16.
#[test]
fn converted_tensors_are_the_folder_tensors() {
    for name in ["sd1-tiny", "sd2-tiny"] {
        let file = ModelSource::open(&single(name), &with_configs(name)).unwrap();
        let folder = ModelSource::open(&fixtures().join(name), &SourceOptions::default()).unwrap();
        for component in ["unet", "text_encoder"] {
            let got = file
                .load_tensors(component, DType::F32, &Device::Cpu)
                .unwrap();
            // The folders were saved by transformers 5 (no `text_model.` prefix); single files
            // convert to the prefixed names of every released SD text encoder.
            let want: HashMap<String, Tensor> = folder
                .load_tensors(component, DType::F32, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(k, t)| {
                    let k = match component {
                        "text_encoder" if !k.starts_with("text_model.") => {
                            format!("text_model.{k}")
                        }
                        _ => k,
                    };
                    (k, t.to_dtype(DType::F16).unwrap())
                })
                .collect();
            let mut names: Vec<_> = want.keys().collect();
            names.sort();
            let mut got_names: Vec<_> = got.keys().collect();
            got_names.sort();
            assert_eq!(names, got_names, "{name} {component}: tensor names");
            for n in names {
                assert!(equal(&got[n], &want[n]), "{name} {component} `{n}`");
            }
        }
    }
}

fn shapes(name: &str) -> infer::Shapes {
    let bytes = std::fs::read(single(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec()))
        .collect()
}

/// What the shapes say is read off them: compared with the folders' configs.
#[test]
fn standard_configs_read_off_the_shapes() {
    for (name, layout) in [
        ("sd1-tiny", TextLayout::Clip),
        ("sd2-tiny", TextLayout::OpenClip),
    ] {
        let s = shapes(name);
        assert_eq!(infer::text_layout(&s).unwrap(), layout);
        let unet = infer::unet_config(&s, layout, false).unwrap();
        let want = folder_config(name, "unet");
        for key in [
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "cross_attention_dim",
            "down_block_types",
            "up_block_types",
            "use_linear_projection",
            "transformer_layers_per_block",
        ] {
            assert_eq!(unet[key], want[key], "{name} unet {key}");
        }
        let vae = infer::vae_config(&s, false).unwrap();
        let want = folder_config(name, "vae");
        for key in [
            "in_channels",
            "out_channels",
            "block_out_channels",
            "layers_per_block",
            "latent_channels",
            "down_block_types",
            "up_block_types",
        ] {
            assert_eq!(vae[key], want[key], "{name} vae {key}");
        }
        // The tiny text encoders are 32 wide: SD's 64-channel heads cannot be assumed.
        let err = SingleFile::open(&single(name), &SourceOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--model-config"), "{err}");
    }
    // SD 2.x's tower (ViT-H/14, 1024 wide): 23 layers from files with 24 blocks (the original
    // checkpoints) or 23 (diffusers' conversion), as diffusers reads both; other depths refused.
    let vit_h = |blocks: usize| {
        let mut s = infer::Shapes::new();
        let p = "cond_stage_model.model.";
        s.insert(format!("{p}token_embedding.weight"), vec![49408, 1024]);
        s.insert(format!("{p}positional_embedding"), vec![77, 1024]);
        for i in 0..blocks {
            s.insert(
                format!("{p}transformer.resblocks.{i}.mlp.c_fc.weight"),
                vec![4096, 1024],
            );
        }
        infer::text_encoder_config(&s, TextLayout::OpenClip)
    };
    for blocks in [23, 24] {
        let te = vit_h(blocks).unwrap();
        assert_eq!(
            (
                te["num_hidden_layers"].as_u64(),
                te["num_attention_heads"].as_u64(),
                te["hidden_size"].as_u64()
            ),
            (Some(23), Some(16), Some(1024)),
            "{blocks} blocks"
        );
        assert_eq!(te["hidden_act"], "gelu");
    }
    for blocks in [12, 22, 25] {
        let err = vit_h(blocks).unwrap_err();
        assert!(err.contains(&format!("{blocks} blocks")), "{err}");
        assert!(err.contains("--model-config"), "{err}");
    }
    // Any other OpenCLIP tower: whether its last block is used cannot be read off the file.
    let mut s = shapes("sd2-tiny");
    for (k, v) in s.iter_mut() {
        if k.contains("token_embedding") {
            v[1] = 64;
        }
    }
    let err = infer::text_encoder_config(&s, TextLayout::OpenClip).unwrap_err();
    assert!(
        err.contains("ambiguous") && err.contains("--model-config"),
        "{err}"
    );
}

/// `single-file/sd2-tiny.safetensors` without its unused last OpenCLIP block: the form
/// diffusers' diffusers→original conversion writes. `make_sd2_used_blocks_fixture.py` checked
/// that diffusers reads it into the same text encoder, with the recorded output.
#[test]
fn sd2_files_with_and_without_the_unused_block_read_alike() {
    let full = single("sd2-tiny");
    let bytes = std::fs::read(&full).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let block = "cond_stage_model.model.transformer.resblocks.";
    let last = st
        .names()
        .iter()
        .filter_map(|k| {
            k.strip_prefix(block)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(&format!("{block}{last}.")))
        .collect();
    assert!(kept.len() < st.len());
    let dir = tempfile::tempdir().unwrap();
    let used = dir.path().join("sd2-tiny-used-blocks.safetensors");
    safetensors::serialize_to_file(kept, None, &used).unwrap();

    let r = candle_core::safetensors::load(
        fixtures().join("single-file/sd2-tiny-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for file in [&full, &used] {
        let source = ModelSource::open(file, &with_configs("sd2-tiny")).unwrap();
        let model = StableDiffusion::load_source(&source, &Device::Cpu, DType::F32, &[]).unwrap();
        let hidden = model.encode_prompts(&["a photo of a red circle"]).unwrap();
        let e = rel_err(&hidden, &r["text_hidden"]);
        assert!(e < 1e-5, "{}: text hidden {e:e}", file.display());
    }
}

#[test]
fn sd2_tokenizer_shipped_in_data_matches_the_folder() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/clip-tokenizer");
    let shipped = ClipTokenizer::from_files_with_config(
        &data.join("vocab.json"),
        &data.join("merges.txt"),
        &data.join("sd2/tokenizer_config.json"),
    )
    .unwrap();
    let folder = ClipTokenizer::from_dir(&fixtures().join("sd2-tiny/tokenizer")).unwrap();
    assert_eq!(shipped.pad_token(), "!");
    for p in [
        "a photo of a red circle",
        "Bob rides a bike!",
        "!! wow !!",
        "",
    ] {
        assert_eq!(
            shipped.encode(p).unwrap(),
            folder.encode(p).unwrap(),
            "{p:?}"
        );
    }
}

/// A patch written back into the single-file layout: fused q/k/v rows, 1×1-conv VAE
/// attention and plain UNet tensors all land where they came from, in the file's dtype.
#[test]
fn patches_are_written_back_in_the_original_layout() {
    let opts = with_configs("sd2-tiny");
    let source = SingleFile::open(&single("sd2-tiny"), &opts).unwrap();
    let keys = [
        (
            "unet",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        ),
        ("vae", "decoder.mid_block.attentions.0.to_q.weight"),
        (
            "text_encoder",
            "text_model.encoder.layers.1.self_attn.k_proj.weight",
        ),
        (
            "text_encoder",
            "text_model.encoder.layers.1.self_attn.k_proj.bias",
        ),
    ];
    let mut base = BTreeMap::new();
    let mut deltas = BTreeMap::new();
    for (i, (component, name)) in keys.iter().enumerate() {
        let t = source
            .component_tensors(component, DType::F32, &Device::Cpu)
            .unwrap()[*name]
            .clone();
        let d = (Tensor::ones(t.dims(), DType::F32, &Device::Cpu).unwrap()
            * (0.25 * (i + 1) as f64))
            .unwrap();
        base.insert(format!("{component}.{name}"), t);
        deltas.insert(format!("{component}.{name}"), d);
    }
    let patch = Patch::from_deltas(
        &base,
        deltas.clone(),
        vec![Concept {
            name: "x".into(),
            kind: "object".into(),
        }],
        serde_json::json!({}),
        DType::F32,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("patched.safetensors");
    let written = source
        .write_patched(&out, std::slice::from_ref(&patch), &BTreeMap::new())
        .unwrap();
    assert_eq!(written, 4, "to_k, vae q, the fused in_proj weight and bias");

    let patched = SingleFile::open(&out, &opts).unwrap();
    for (key, d) in &deltas {
        let (component, name) = key.split_once('.').unwrap();
        let got = &patched
            .component_tensors(component, DType::F32, &Device::Cpu)
            .unwrap()[name];
        let want = (&base[key] + d).unwrap().to_dtype(DType::F16).unwrap();
        assert!(equal(got, &want), "{key}");
    }
    // Everything else is byte-identical, including tensors no module reads.
    let a = std::fs::read(single("sd2-tiny")).unwrap();
    let b = std::fs::read(&out).unwrap();
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let changed = [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias",
    ];
    assert_eq!(a.names().len(), b.names().len());
    for name in a.names() {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!((ta.dtype(), ta.shape()), (tb.dtype(), tb.shape()), "{name}");
        if changed.contains(&name) {
            assert_ne!(ta.data(), tb.data(), "{name}");
        } else {
            assert_eq!(ta.data(), tb.data(), "{name}");
        }
    }
    // The q and v thirds of the fused projection are untouched.
    let fused = |st: &safetensors::SafeTensors| -> Vec<u8> {
        st.tensor(changed[2]).unwrap().data().to_vec()
    };
    let (fa, fb) = (fused(&a), fused(&b));
    let third = fa.len() / 3;
    assert_eq!(fa[..third], fb[..third]);
    assert_ne!(fa[third..2 * third], fb[third..2 * third]);
    assert_eq!(fa[2 * third..], fb[2 * third..]);
    // The patch's hashes refuse the patched file as a base.
    assert!(patched
        .write_patched(
            &dir.path().join("again.safetensors"),
            &[patch],
            &BTreeMap::new()
        )
        .is_err());
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"not even read").unwrap();
    let err = ModelSource::open(&ckpt, &SourceOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pickle") && err.contains("model.ckpt"),
        "{err}"
    );

    // An architecture that is not SD 1.x/2.x: a tensor no rule knows, named in the error.
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(single("sd1-tiny"), &Device::Cpu).unwrap();
    tensors.insert(
        "model.diffusion_model.label_emb.0.0.weight".into(),
        Tensor::zeros((4, 4), DType::F16, &Device::Cpu).unwrap(),
    );
    let odd = dir.path().join("odd.safetensors");
    candle_core::safetensors::save(&tensors, &odd).unwrap();
    let err = ModelSource::open(&odd, &with_configs("sd1-tiny"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label_emb") && err.contains("odd.safetensors"),
        "{err}"
    );

    // No UNet at all.
    let lora = dir.path().join("lora.safetensors");
    let t = HashMap::from([(
        "lora_unet_x.lora_down.weight".to_string(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&t, &lora).unwrap();
    let err = ModelSource::open(&lora, &SourceOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a Stable Diffusion single-file checkpoint"),
        "{err}"
    );

    // A path that does not exist says what a model is.
    let err = ModelSource::open(&dir.path().join("nowhere"), &SourceOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("model_index.json"),
        "{err}"
    );

    // A config folder with a diffusers folder is a mistake, not silently ignored.
    let err = ModelSource::open(&fixtures().join("sd1-tiny"), &with_configs("sd1-tiny"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("only used with a single-file"), "{err}");
}

#[test]
fn the_default_image_side_is_the_sample_size_times_the_vae_factor() {
    // sd1-tiny: sample_size 16, two VAE levels (factor 2).
    let folder =
        ModelSource::open(&fixtures().join("sd1-tiny"), &SourceOptions::default()).unwrap();
    let file = ModelSource::open(&single("sd1-tiny"), &with_configs("sd1-tiny")).unwrap();
    assert_eq!(folder.default_image_side().unwrap(), 32);
    assert_eq!(file.default_image_side().unwrap(), 32);
    let sd = StableDiffusion::load(&fixtures().join("sd1-tiny"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(sd.default_image_side(), 32);
    // No sample size in the config: SD 1.x's 64 latents.
    let mut unet = folder.unet_config().unwrap();
    unet.sample_size = None;
    assert_eq!(unet.default_image_side(8), 512);
}
