//! Runs the real `fmn-sample` binary on the tiny SD1 fixture model.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn sample(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmn-sample"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run fmn-sample")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn writes_images_manifest_latents_and_attention() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out dir");
    let latents = tmp.path().join("latents.safetensors");
    let attention = tmp.path().join("attn.safetensors");
    let model = fixtures().join("sd1-tiny");
    let res = sample(&[
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of a red circle",
        "--prompt",
        "bob",
        "--num-images",
        "2",
        "--steps",
        "3",
        "--scheduler",
        "euler-a",
        "--seed",
        "7",
        "--save-latents",
        latents.to_str().unwrap(),
        "--save-attention",
        attention.to_str().unwrap(),
        "--attention-steps",
        "0,2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest, on_disk);
    assert_eq!(manifest["scheduler"], "euler-a");
    assert_eq!(manifest["width"], 32);
    let images = manifest["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    assert_eq!(images[3]["prompt"], "bob");
    assert_eq!(images[3]["seed"], 8);
    for img in images {
        let png = image::open(out.join(img["file"].as_str().unwrap())).unwrap();
        assert_eq!((png.width(), png.height()), (32, 32));
    }
    let lat = candle_core::safetensors::load(&latents, &Device::Cpu).unwrap();
    assert_eq!(lat["latents"].dims(), &[4, 4, 16, 16]);
    let att = candle_core::safetensors::load(&attention, &Device::Cpu).unwrap();
    // 11 attn2 modules in the fixture UNet, at 2 steps.
    assert_eq!(att.len(), 22);
    let t = &att["step2/down_blocks.0.attentions.0.transformer_blocks.0.attn2"];
    assert_eq!(t.dims(), &[4, 4, 256, 77]);
    // Same seed, same prompt: images of prompt 0 and a rerun agree; different seeds differ.
    let a = image::open(out.join("p000_n00.png")).unwrap().to_rgb8();
    let b = image::open(out.join("p000_n01.png")).unwrap().to_rgb8();
    assert_ne!(a.as_raw(), b.as_raw());
}

/// The CLI path (init latents in, latents and PNG out) reproduces diffusers' 10-step DDIM run.
#[test]
fn init_latents_reproduce_the_diffusers_ddim_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = candle_core::safetensors::load(
        fixtures().join("sd1-tiny-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let init = tmp.path().join("init.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("latents", reference["init_latents"].clone())]),
        &init,
    )
    .unwrap();
    let model = fixtures().join("sd1-tiny");
    // The fixture's DDIM run (10 steps, guidance 7.5) from `init` into `out/`, plus `extra`
    // flags; returns the final latents.
    let ddim_run = |out: &str, extra: &[&str]| {
        let saved = tmp.path().join(format!("{out}.safetensors"));
        let out = tmp.path().join(out);
        let mut args = vec![
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photo of a red circle",
            "--scheduler",
            "ddim",
            "--steps",
            "10",
            "--guidance",
            "7.5",
            "--init-latents",
            init.to_str().unwrap(),
            "--save-latents",
            saved.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let res = sample(&args);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        candle_core::safetensors::load(&saved, &Device::Cpu).unwrap()["latents"].clone()
    };
    let got = ddim_run("out", &[]);
    let out = tmp.path().join("out");
    let want = &reference["ddim_latents"];
    let scale: f32 = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(max_abs_diff(&got, want) <= 1e-3 * scale);
    let png = image::open(out.join("p000_n00.png")).unwrap().to_rgb8();
    let want_img = (reference["ddim_image"]
        .get(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        * 255.0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (g, w) in png.as_raw().iter().zip(&want_img) {
        assert!((*g as f32 - w).abs() <= 1.0, "pixel {g} vs {w}");
    }

    // diffusers' guidance_rescale = 0.7 on the same run (tests/fixtures/gen/make_rescale_fixture.py).
    let rescaled_ref = candle_core::safetensors::load(
        fixtures().join("sd1-tiny-rescale.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let want = &rescaled_ref["ddim_rescale_latents"];
    let rescaled = &ddim_run("out-rescaled", &["--guidance-rescale", "0.7"]);
    let err = max_abs_diff(rescaled, want);
    let effect = max_abs_diff(want, &reference["ddim_latents"]);
    assert!(
        err <= 1e-3 * scale && effect > 100.0 * err,
        "rescaled vs diffusers {err}, rescale's own effect {effect}, scale {scale}"
    );
}

/// Runs with a broken input: must fail with a message naming `needle`, no panic, no output.
fn assert_clean_failure(args: &[&str], out: &Path, needle: &str) {
    let res = sample(args);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "succeeded on bad input: {args:?}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.contains(needle),
        "error does not name `{needle}`: {stderr}"
    );
    assert!(!out.exists(), "output folder was created despite the error");
    if let Some(parent) = out.parent() {
        for e in std::fs::read_dir(parent).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".partial-"),
                "staging folder left behind: {name}"
            );
        }
    }
}

fn broken_model(tmp: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = tmp.join("model");
    fmn_testkit::copy_dir(&fixtures().join("sd1-tiny"), &dir);
    edit(&dir);
    dir
}

fn rewrite_unet(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let file = dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &file).unwrap();
}

#[test]
fn bad_inputs_fail_cleanly_naming_the_culprit() {
    type Case<'a> = (&'a str, Box<dyn Fn(&Path)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing folder",
            Box::new(|d: &Path| std::fs::remove_dir_all(d).unwrap()),
            vec![],
            "model_index.json",
        ),
        (
            "bad sampling defaults",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("sampling_defaults.json"),
                    r#"{"guidance_scale": -2}"#,
                )
                .unwrap()
            }),
            vec![],
            "sampling_defaults.json",
        ),
        (
            "missing unet",
            Box::new(|d: &Path| std::fs::remove_dir_all(d.join("unet")).unwrap()),
            vec![],
            "unet",
        ),
        (
            "bad config",
            Box::new(|d: &Path| std::fs::write(d.join("unet/config.json"), "{ not json").unwrap()),
            vec![],
            "unet/config.json",
        ),
        (
            "truncated weights",
            Box::new(|d: &Path| {
                let f = d.join("vae/diffusion_pytorch_model.safetensors");
                let bytes = std::fs::read(&f).unwrap();
                std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
            }),
            vec![],
            "vae/diffusion_pytorch_model.safetensors",
        ),
        (
            "missing tensor",
            Box::new(|d: &Path| {
                rewrite_unet(d, |t| {
                    t.remove("conv_in.weight");
                })
            }),
            vec![],
            "conv_in.weight",
        ),
        (
            "wrong shape",
            Box::new(|d: &Path| {
                rewrite_unet(d, |t| {
                    t.insert(
                        "conv_out.bias".into(),
                        Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(),
                    );
                })
            }),
            vec![],
            "conv_out.bias",
        ),
        (
            "unknown scheduler",
            Box::new(|_: &Path| {}),
            vec!["--scheduler", "plms"],
            "plms",
        ),
        (
            "missing prompt file",
            Box::new(|_: &Path| {}),
            vec!["--prompt-file", "/nonexistent/prompts.txt"],
            "/nonexistent/prompts.txt",
        ),
        (
            "init latents without the tensor",
            Box::new(|d: &Path| {
                candle_core::safetensors::save(
                    &HashMap::from([(
                        "noise",
                        Tensor::zeros((1, 4, 16, 16), candle_core::DType::F32, &Device::Cpu)
                            .unwrap(),
                    )]),
                    d.join("init.safetensors"),
                )
                .unwrap()
            }),
            vec!["--init-latents", "INIT"],
            "latents",
        ),
        (
            "size not a multiple of the VAE factor",
            Box::new(|_: &Path| {}),
            vec!["--width", "33"],
            "33",
        ),
        (
            "guidance rescale outside [0, 1]",
            Box::new(|_: &Path| {}),
            vec!["--guidance-rescale", "1.5"],
            "--guidance-rescale",
        ),
    ];
    for (what, edit, extra, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let model = broken_model(tmp.path(), |d| edit(d));
        let out = tmp.path().join("out");
        let init = model.join("init.safetensors");
        let mut args = vec![
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra.iter().map(|a| {
            if *a == "INIT" {
                init.to_str().unwrap()
            } else {
                a
            }
        }));
        eprintln!("case: {what}");
        assert_clean_failure(&args, &out, needle);
    }
}

/// `--patch` adds a patch's deltas at load time: the run equals one on a folder whose weights
/// files hold base + delta (written here by hand), differs from the unpatched run, and a patch
/// for another base is refused naming the patch file and the tensor.
#[test]
fn patch_applies_deltas_at_load_time() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("sd1-tiny");
    let patch = fixtures().join("patch/sd1-tiny-forget.safetensors");
    let deltas = candle_core::safetensors::load(&patch, &Device::Cpu).unwrap();
    let by_hand = tmp.path().join("by-hand");
    fmn_testkit::copy_dir(&base, &by_hand);
    for (component, file) in [
        ("unet", "unet/diffusion_pytorch_model.safetensors"),
        ("text_encoder", "text_encoder/model.safetensors"),
    ] {
        let path = by_hand.join(file);
        let mut w = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        for (key, d) in &deltas {
            if let Some(name) = key.strip_prefix(&format!("{component}.")) {
                let sum = (&w[name] + d).unwrap();
                w.insert(name.to_string(), sum);
            }
        }
        candle_core::safetensors::save(&w, &path).unwrap();
    }
    let run = |model: &Path, patch: Option<&Path>, name: &str| {
        let out = tmp.path().join(name);
        let latents = tmp.path().join(format!("{name}.safetensors"));
        let mut args = vec![
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a photo of a red circle",
            "--steps",
            "2",
            "--save-latents",
            latents.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        if let Some(p) = patch {
            args.extend(["--patch", p.to_str().unwrap()]);
        }
        let res = sample(&args);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let manifest: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
        let lat = candle_core::safetensors::load(&latents, &Device::Cpu).unwrap();
        (manifest, lat["latents"].clone())
    };
    let (manifest, patched) = run(&base, Some(&patch), "patched");
    assert_eq!(manifest["patches"][0], patch.to_str().unwrap());
    let (_, hand) = run(&by_hand, None, "hand");
    let (_, plain) = run(&base, None, "plain");
    assert_eq!(max_abs_diff(&patched, &hand), 0.0);
    assert!(max_abs_diff(&patched, &plain) > 1e-2);

    // The by-hand folder is another base for this patch.
    let out = tmp.path().join("refused");
    let args = [
        "--model",
        by_hand.to_str().unwrap(),
        "--patch",
        patch.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    assert_clean_failure(&args, &out, "sd1-tiny-forget.safetensors");
    let res = sample(&args);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(
        stderr.contains("another base model") && stderr.contains("differs"),
        "{stderr}"
    );
}

#[test]
fn an_embedding_of_word_rows_samples_the_same_images_as_the_words() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("sd1-tiny");
    let sd = fmn_sd::sample::pipeline::StableDiffusion::load(
        &model,
        &Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let row = |w: &str| {
        let id = sd.tokenizer.tokenize(w).unwrap()[0] as usize;
        sd.text_encoder.token_embedding_table().get(id).unwrap()
    };
    let emb = tmp.path().join("reddog.safetensors");
    fmn_sd::io::embedding::TokenEmbedding::new(
        vec!["<s1>".into(), "<s2>".into()],
        Tensor::stack(&[row("red"), row("dog")], 0).unwrap(),
        Default::default(),
    )
    .unwrap()
    .save(&emb, fmn_sd::io::embedding::EmbeddingLayout::Fmn)
    .unwrap();
    let (words, tokens) = (tmp.path().join("words"), tmp.path().join("tokens"));
    let m = model.to_str().unwrap();
    let common = ["--model", m, "--steps", "3", "--seed", "5", "--out"];
    let res = sample(
        &[
            &common[..],
            &[words.to_str().unwrap(), "--prompt", "a red dog"],
        ]
        .concat(),
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let res = sample(
        &[
            &common[..],
            &[
                tokens.to_str().unwrap(),
                "--prompt",
                "a <s1> <s2>",
                "--embedding",
                emb.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let a = image::open(words.join("p000_n00.png")).unwrap().to_rgb8();
    let b = image::open(tokens.join("p000_n00.png")).unwrap().to_rgb8();
    assert_eq!(a.as_raw(), b.as_raw());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tokens.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["embeddings"][0], emb.to_str().unwrap());

    let wide = tmp.path().join("wide.safetensors");
    let t: HashMap<String, Tensor> = [(
        "<w>".to_string(),
        Tensor::zeros(768, candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    fmn_sd::io::weights::save_safetensors_atomic(&wide, &t, None).unwrap();
    let out = tmp.path().join("bad");
    assert_clean_failure(
        &[
            "--model",
            m,
            "--prompt",
            "a <w>",
            "--embedding",
            wide.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &out,
        "768",
    );
}

#[test]
fn a_config_file_supplies_options_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("sd1-tiny");
    let cfg = tmp.path().join("sample.yaml");
    std::fs::write(
        &cfg,
        format!(
            "model: {}\nprompt: [\"a red dog\", \"a cat\"]\nsteps: 2\nnum_images: 2\nseed: 9\n",
            model.display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let res = sample(&[
        "--config",
        cfg.to_str().unwrap(),
        "--num-images",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["prompts"], serde_json::json!(["a red dog", "a cat"]));
    assert_eq!(m["steps"], 2);
    assert_eq!(m["seed"], 9);
    assert_eq!(m["num_images"], 1, "the flag wins over the file");

    std::fs::write(&cfg, "stepz: 2\n").unwrap();
    let bad = tmp.path().join("bad");
    assert_clean_failure(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--prompt",
            "x",
            "--out",
            bad.to_str().unwrap(),
        ],
        &bad,
        "stepz",
    );
}

#[test]
fn guidance_comes_from_the_flag_then_the_config_then_the_model_folder_then_7_5() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    fmn_testkit::copy_dir(&fixtures().join("sd1-tiny"), &model);
    let guidance_of = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a cat",
            "--steps",
            "1",
            "--num-images",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let res = sample(&args);
        assert!(
            res.status.success(),
            "{}",
            String::from_utf8_lossy(&res.stderr)
        );
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        m["guidance"].as_f64().unwrap()
    };
    assert_eq!(guidance_of("plain", &[]), 7.5);
    std::fs::write(
        model.join("sampling_defaults.json"),
        r#"{"guidance_scale": 4.0}"#,
    )
    .unwrap();
    assert_eq!(guidance_of("folder", &[]), 4.0);
    let cfg = tmp.path().join("sample.yaml");
    std::fs::write(&cfg, "guidance: 5.5\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    assert_eq!(guidance_of("config", &["--config", cfg]), 5.5);
    assert_eq!(
        guidance_of("flag", &["--config", cfg, "--guidance", "6"]),
        6.0
    );
}

/// The pre-flight memory check: a request far beyond the machine is refused before any weight
/// is loaded, with the estimate in the message; `--max-memory` sets the budget.
#[test]
fn a_request_that_cannot_fit_in_memory_is_refused_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("sd1-tiny");
    let model = model.to_str().unwrap();
    let out = tmp.path().join("huge");
    let o = out.to_str().unwrap();
    let huge = [
        "--model", model, "--prompt", "x", "--width", "100000", "--height", "100000", "--out", o,
    ];
    assert_clean_failure(&huge, &out, "sampling 1 image(s) of 100000x100000");
    let res = sample(&huge);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs an estimated"), "{stderr}");
    // Even a small request is refused under a budget below the weights themselves.
    let small = [
        "--model",
        model,
        "--prompt",
        "x",
        "--max-memory",
        "1M",
        "--out",
        o,
    ];
    assert_clean_failure(&small, &out, "more than the --max-memory limit (1 MiB)");
    assert_clean_failure(
        &[
            "--model",
            model,
            "--prompt",
            "x",
            "--max-memory",
            "lots",
            "--out",
            o,
        ],
        &out,
        "expected a size such as 12G",
    );
}
