//! fmn-resteer with no config: fmn's method (the K/V solve with automatic preservation), the
//! solve alone without images (the default, `max_train_steps: 0`), and the bad inputs of preservation.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::patch::Patch;
use fmn_sd::sample::pipeline::StableDiffusion;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::moved;

fn model() -> PathBuf {
    fmn_testkit::fixtures().join("sd1-tiny")
}

fn toy_model() -> PathBuf {
    fmn_testkit::fixtures().join("../../data/toy-model")
}

fn resteer(args: &[&str], cache: &Path, out: &Path) -> Output {
    resteer_on(&model(), args, cache, out)
}

fn resteer_on(model: &Path, args: &[&str], cache: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fmn-resteer"))
        .arg("--model")
        .arg(model)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--quiet", "--json"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

use fmn_testkit::json_of as ok;

#[test]
fn with_no_config_the_solve_alone_needs_no_images_and_preserves_the_shipped_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("p.safetensors");
    let args = ["--concept", "bob", "--kind", "object"];
    let first = ok(&resteer(&args, &cache, &out));
    assert_eq!(first["report"]["steps"], 0);
    assert_eq!(first["preserved"]["prompts"], 1750);
    assert_eq!(first["preserved"]["taken_out"], 0);
    assert_eq!(first["preserved"]["cache_hit"], false);
    let patch = Patch::load(&out).unwrap();
    assert!(!patch.deltas.is_empty());
    for name in patch.deltas.keys() {
        assert!(
            name.contains(".attn2.to_k.") || name.contains(".attn2.to_v."),
            "{name} changed"
        );
    }
    // Again: the cache is read and the deltas are the same.
    let again = tmp.path().join("q.safetensors");
    let second = ok(&resteer(&args, &cache, &again));
    assert_eq!(second["preserved"]["cache_hit"], true);
    let again = Patch::load(&again).unwrap();
    for (name, d) in &patch.deltas {
        let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(f32s(d), f32s(&again.deltas[name]), "{name}");
    }

    // bob, an object, is replaced by a one-word object of the shipped lists ("a photo of {}"
    // with "a dog" gives "a dog"), whose prompt is its anchor.
    let sibling = first["concepts"][0]["anchor"].as_str().unwrap().to_string();
    let words: Vec<&str> = sibling.split_whitespace().collect();
    assert!(
        matches!(words[..], ["a" | "an", _]),
        "bob's sibling {sibling:?}"
    );
    assert_eq!(
        first["concepts"][0]["anchors"][0],
        format!("a photo of {sibling}")
    );
    // Only the object and animal lists give siblings.
    let things: Vec<String> = ["objects", "animals"]
        .iter()
        .flat_map(|list| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/preserve");
            std::fs::read_to_string(root.join(format!("{list}.txt")))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(things.contains(&sibling), "bob's sibling {sibling:?}");

    // Without preservation the same solve moves the shipped prompts' keys/values further, and
    // the concept's own prompt is moved in both (the same anchor, the prompt without bob: a
    // run without preservation has no list to draw a sibling from).
    let plain = tmp.path().join("plain.safetensors");
    ok(&resteer(
        &[&args[..], &["--no-sibling-anchor"]].concat(),
        &cache,
        &plain,
    ));
    let patch = Patch::load(&plain).unwrap();
    let loose = tmp.path().join("loose.safetensors");
    let none = ok(&resteer(
        &[&args[..], &["--no-preserve"]].concat(),
        &cache,
        &loose,
    ));
    assert!(none["preserved"].is_null());
    assert_eq!(none["concepts"][0]["anchor"], "");
    let loose = Patch::load(&loose).unwrap();
    let sd = StableDiffusion::load(&model(), &Device::Cpu, DType::F32).unwrap();
    for prompt in [
        "a photo of a dog",
        "a painting in the style of Monet",
        "a photo of a chef",
    ] {
        let (kept, free) = (moved(&sd, &patch, prompt), moved(&sd, &loose, prompt));
        assert!(
            kept < 0.5 * free,
            "{prompt}: moved {kept} preserved vs {free} not"
        );
    }
    assert!(moved(&sd, &patch, "a photo of bob") > 0.0);
}

#[test]
fn a_concept_in_a_shipped_list_is_taken_out_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.safetensors");
    let res = resteer(
        &["--concept", "Van Gogh", "--kind", "style", "--steps", "0"],
        &tmp.path().join("cache"),
        &out,
    );
    let json = ok(&res);
    // styles.txt lists Van Gogh under its two templates.
    assert_eq!(json["preserved"]["taken_out"], 2);
}

#[test]
fn bad_preservation_input_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("p.safetensors");
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# nothing\n\n").unwrap();
    let only_bob = tmp.path().join("bob.txt");
    std::fs::write(&only_bob, "@template a photo of {}\nbob\nBob\n").unwrap();
    let concept = ["--concept", "bob", "--kind", "object", "--steps", "0"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&concept[..], &["--preserve", empty.to_str().unwrap()]].concat(),
            "holds no prompts",
        ),
        (
            [&concept[..], &["--preserve", only_bob.to_str().unwrap()]].concat(),
            "names a concept being forgotten",
        ),
        (
            [&concept[..], &["--preserve", "/nonexistent/list.txt"]].concat(),
            "/nonexistent/list.txt",
        ),
        (vec!["--steps", "0"], "no concept given"),
        (
            vec!["--concept", "bob", "--kind", "object", "--steps", "3"],
            "has no images",
        ),
        (
            [&concept[..], &["--preset", "original"]].concat(),
            "only solves",
        ),
    ];
    for (args, expect) in cases {
        let res = resteer(&args, &cache, &out);
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected `{expect}` in {err}"
        );
        assert!(!out.exists());
    }
    // An unknown preset is a usage error that lists the presets.
    let res = resteer(
        &[&concept[..], &["--preset", "paper"]].concat(),
        &cache,
        &out,
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{err}");
    assert!(err.contains("original") && err.contains("toy"), "{err}");
}

#[test]
fn a_model_folder_with_its_own_list_preserves_that_list() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("p.safetensors");
    let json = ok(&resteer_on(
        &toy_model(),
        &["--concept", "bob", "--kind", "object", "--steps", "0"],
        &tmp.path().join("cache"),
        &out,
    ));
    // data/toy-model/preserve.txt: 18 subjects, plain and striped, under 2 templates; bob's 4
    // ("a photo of bob", "bob", and both in the style of stripes) are taken out.
    assert_eq!(json["preserved"]["prompts"], 72);
    assert_eq!(json["preserved"]["taken_out"], 4);
}

/// `fmn-resteer --config` with `config` written beside `out`, on the toy model.
fn toy_resteer(tmp: &Path, config: &str, out: &Path) -> serde_json::Value {
    let cfg = tmp.join(format!(
        "{}.yaml",
        out.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&cfg, config).unwrap();
    let cfg = cfg.to_str().unwrap();
    ok(&resteer_on(
        &toy_model(),
        &["--config", cfg],
        &tmp.join("cache"),
        out,
    ))
}

#[test]
fn the_preserved_entries_naming_a_concept_are_its_prompts_and_the_push_scales_the_delta() {
    let tmp = tempfile::tempdir().unwrap();
    // The sibling anchor (its own test below) would give circle another anchor.
    let concepts = "multi_concept:\n  - {name: circle, kind: object}\n  - {name: stripes, kind: style}\ndelta_dtype: f32\nsibling_anchor: false\n";
    let pushed = tmp.path().join("pushed.safetensors");
    let json = toy_resteer(
        tmp.path(),
        &format!("{concepts}anchor_push: 1.0\n"),
        &pushed,
    );
    let (circle, stripes) = (anchor_pairs(&json, 0), anchor_pairs(&json, 1));
    let has =
        |set: &[(String, String)], p: &str, a: &str| set.iter().any(|(x, y)| x == p && y == a);
    // The kind's templates first, then data/toy-model/preserve.txt's entries naming the concept
    // and not the other one (4 plain entries with circle under its 2 templates; 18 striped ones
    // less the 4 striped circles under 2): an entry naming both would be anchored onto stripes
    // by circle and onto circle by stripes.
    assert!(has(&circle, "a photo of circle", "a photo of"));
    assert!(has(&circle, "a yellow circle", "a yellow"));
    assert!(has(
        &circle,
        "a photo of a blue circle",
        "a photo of a blue"
    ));
    assert!(
        !circle.iter().any(|(p, _)| p.contains("stripes")),
        "{circle:?}"
    );
    assert_eq!(circle.len(), 2 + 8);
    assert!(has(
        &stripes,
        "a red square in the style of stripes",
        "a red square"
    ));
    assert!(has(
        &stripes,
        "a photo of bob in the style of stripes",
        "a photo of bob"
    ));
    assert!(
        !stripes.iter().any(|(p, _)| p.contains("circle")),
        "{stripes:?}"
    );
    assert_eq!(stripes.len(), 2 + 28);

    // The target A + push (A - C) is linear in the push, and so is the solved delta: push 1
    // (an object's default) gives twice the delta of push 0.
    let at_anchor = tmp.path().join("at_anchor.safetensors");
    toy_resteer(
        tmp.path(),
        &format!("{concepts}anchor_push: 0.0\n"),
        &at_anchor,
    );
    let (pushed, at_anchor) = (
        Patch::load(&pushed).unwrap(),
        Patch::load(&at_anchor).unwrap(),
    );
    assert!(!pushed.deltas.is_empty());
    for (name, d) in &pushed.deltas {
        let twice = (at_anchor.deltas[name].to_dtype(DType::F32).unwrap() * 2.0).unwrap();
        let (err, scale) = (
            fmn_testkit::max_abs_diff(d, &twice),
            fmn_testkit::max_abs(d),
        );
        assert!(
            scale > 0.0 && err <= 1e-4 * scale,
            "{name}: {err} of {scale}"
        );
    }

    // Unset, the push is the kind's: 0 for a style, 1 for an object.
    let stripes_alone = |extra: &str, out: &str| {
        let out = tmp.path().join(out);
        toy_resteer(
            tmp.path(),
            &format!(
                "multi_concept:\n  - {{name: stripes, kind: style}}\ndelta_dtype: f32\n{extra}"
            ),
            &out,
        );
        Patch::load(&out).unwrap()
    };
    let by_default = stripes_alone("", "stripes-default.safetensors");
    let at_zero = stripes_alone("anchor_push: 0.0\n", "stripes-push0.safetensors");
    let at_one = stripes_alone("anchor_push: 1.0\n", "stripes-push1.safetensors");
    assert_same_nonzero_deltas(&by_default, &at_zero);
    for (name, d) in &by_default.deltas {
        assert!(
            fmn_testkit::max_abs_diff(d, &at_one.deltas[name]) > 0.1 * fmn_testkit::max_abs(d),
            "{name}"
        );
    }

    // Off: the kind's templates only.
    let off = toy_resteer(
        tmp.path(),
        &format!("{concepts}listed_concept_prompts: false\n"),
        &tmp.path().join("off.safetensors"),
    );
    assert_eq!(off["concepts"][0]["prompts"].as_array().unwrap().len(), 2);
}

#[test]
fn the_solve_alone_reads_only_the_weights_it_changes() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of the model whose UNet file holds only the cross-attention K/V weights and whose
    // VAE file is not a weights file at all.
    let stripped = tmp.path().join("stripped");
    fmn_testkit::copy_dir(&model(), &stripped);
    let unet = stripped.join("unet/diffusion_pytorch_model.safetensors");
    let kv: std::collections::HashMap<String, Tensor> =
        candle_core::safetensors::load(&unet, &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n.contains(".attn2.to_k.") || n.contains(".attn2.to_v."))
            .collect();
    assert!(!kv.is_empty());
    candle_core::safetensors::save(&kv, &unet).unwrap();
    std::fs::write(
        stripped.join("vae/diffusion_pytorch_model.safetensors"),
        b"not weights",
    )
    .unwrap();

    let args = ["--concept", "bob", "--kind", "object", "--steps", "0"];
    let cache = tmp.path().join("cache");
    let (full, part) = (tmp.path().join("full.st"), tmp.path().join("part.st"));
    ok(&resteer(&args, &cache, &full));
    ok(&resteer_on(&stripped, &args, &cache, &part));
    let (full, part) = (Patch::load(&full).unwrap(), Patch::load(&part).unwrap());
    assert!(!full.deltas.is_empty());
    assert_eq!(full.deltas.len(), part.deltas.len());
    for (name, d) in &full.deltas {
        assert_eq!(
            fmn_testkit::max_abs_diff(d, &part.deltas[name]),
            0.0,
            "{name}"
        );
    }

    // Steps need the VAE and the whole UNet: the broken VAE file is named.
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 180, 40]))
        .save(images.join("a.png"))
        .unwrap();
    let res = resteer_on(
        &stripped,
        &[
            "--concept",
            "bob",
            "--kind",
            "object",
            "--steps",
            "1",
            "--images",
            images.to_str().unwrap(),
        ],
        &cache,
        &tmp.path().join("steps.st"),
    );
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(err.contains("vae"), "{err}");
}

/// Every delta of `a` is nonzero and equal, bit for bit, to `b`'s of the same name.
fn assert_same_nonzero_deltas(a: &Patch, b: &Patch) {
    for (name, d) in &a.deltas {
        assert!(fmn_testkit::max_abs(d) > 0.0, "{name}");
        assert_eq!(fmn_testkit::max_abs_diff(d, &b.deltas[name]), 0.0, "{name}");
    }
}

/// Per concept of a `--json` report: its prompts with their anchor prompts.
fn anchor_pairs(json: &serde_json::Value, i: usize) -> Vec<(String, String)> {
    let texts = |k: &str| -> Vec<String> {
        json["concepts"][i][k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    texts("prompts").into_iter().zip(texts("anchors")).collect()
}

#[test]
fn an_object_is_anchored_onto_a_sibling_the_run_does_not_forget() {
    let tmp = tempfile::tempdir().unwrap();
    // Square and triangle forgotten with circle leave cross as the only shape that fills
    // circle's places in data/toy-model/preserve.txt ("a yellow {}", ...); bob and kiki fill
    // only "{}"-like places, fewer of them.
    let json = toy_resteer(
        tmp.path(),
        "multi_concept:\n  - {name: circle, kind: object}\n  - {name: square, kind: object}\n  - {name: triangle, kind: object}\n  - {name: bob, kind: object}\n  - {name: kiki, kind: object}\n",
        &tmp.path().join("shapes.safetensors"),
    );
    for (i, name) in [(0, "circle"), (1, "square"), (2, "triangle")] {
        let pairs = anchor_pairs(&json, i);
        assert!(!pairs.is_empty());
        for (prompt, anchor) in &pairs {
            assert_eq!(anchor, &prompt.replace(name, "cross"), "{name}: {pairs:?}");
        }
    }
    // bob's one sibling, kiki, is forgotten too: the prompt without the concept.
    let bob = anchor_pairs(&json, 3);
    assert!(
        bob.iter()
            .any(|(p, a)| p == "a photo of bob" && a == "a photo of"),
        "{bob:?}"
    );

    // Alone, bob's sibling is kiki, and its target is at kiki's prompts: no push (the
    // delta is the same with any anchor_push); an explicit anchor replaces the sibling.
    let alone = |extra: &str, out: &str| {
        let json = toy_resteer(
            tmp.path(),
            &format!("multi_concept:\n  - {{name: bob, kind: object}}\ndelta_dtype: f32\n{extra}"),
            &tmp.path().join(out),
        );
        (
            anchor_pairs(&json, 0),
            Patch::load(&tmp.path().join(out)).unwrap(),
        )
    };
    let (kiki, at_sibling) = alone("", "kiki.safetensors");
    assert!(
        kiki.iter()
            .any(|(p, a)| p == "a photo of bob" && a == "a photo of kiki"),
        "{kiki:?}"
    );
    assert!(
        kiki.iter().all(|(p, a)| a == &p.replace("bob", "kiki")),
        "{kiki:?}"
    );
    let (_, pushed) = alone("anchor_push: 2.0\n", "kiki-pushed.safetensors");
    assert_same_nonzero_deltas(&at_sibling, &pushed);
    // `sibling_push` moves the target past the sibling chosen as before: the same patch as
    // that sibling given as the anchor with the same push.
    let (_, sibling_pushed) = alone("sibling_push: 0.5\n", "kiki-sibling-pushed.safetensors");
    let (_, explicit) = alone(
        "anchor: kiki\nanchor_push: 0.5\n",
        "kiki-explicit-pushed.safetensors",
    );
    for (name, d) in &sibling_pushed.deltas {
        assert!(
            fmn_testkit::max_abs_diff(d, &at_sibling.deltas[name]) > 1e-3 * fmn_testkit::max_abs(d),
            "{name}: the push changed nothing"
        );
        assert!(
            fmn_testkit::max_abs_diff(d, &explicit.deltas[name]) <= 1e-6 * fmn_testkit::max_abs(d),
            "{name}"
        );
    }
    let (plain, _) = alone("anchor: \"\"\n", "plain.safetensors");
    assert!(
        plain
            .iter()
            .any(|(p, a)| p == "a photo of bob" && a == "a photo of"),
        "{plain:?}"
    );

    // Of circle's three shape siblings the one the solve alone gets closest to is taken: each
    // other given as the anchor (target at it) leaves a larger share of the distance.
    let circle = |extra: &str, out: &str| {
        toy_resteer(
            tmp.path(),
            &format!("multi_concept:\n  - {{name: circle, kind: object}}\n{extra}"),
            &tmp.path().join(out),
        )
    };
    let chosen = circle("", "circle.safetensors");
    let sibling = chosen["concepts"][0]["anchor"]
        .as_str()
        .unwrap()
        .to_string();
    let left = |j: &serde_json::Value| j["concepts"][0]["distance_to_targets"][1].as_f64().unwrap();
    let mut others = 0;
    for other in ["square", "triangle", "cross"]
        .into_iter()
        .filter(|s| *s != sibling)
    {
        let j = circle(
            &format!("anchor: {other}\nanchor_push: 0.0\n"),
            &format!("circle-{other}.safetensors"),
        );
        assert!(
            left(&j) > left(&chosen),
            "{other}: {} vs {sibling}: {}",
            left(&j),
            left(&chosen)
        );
        others += 1;
    }
    assert_eq!(others, 2, "circle's sibling {sibling:?} is not a shape");

    // Forgotten together, circle and square are not turned into the same shape: circle, first,
    // keeps its sibling alone; square takes another, though alone it takes the same.
    let square = toy_resteer(
        tmp.path(),
        "multi_concept:\n  - {name: square, kind: object}\n",
        &tmp.path().join("square.safetensors"),
    );
    assert_eq!(
        square["concepts"][0]["anchor"].as_str(),
        Some(sibling.as_str())
    );
    let both = circle(
        "  - {name: square, kind: object}\n",
        "circle-and-square.safetensors",
    );
    assert_eq!(
        both["concepts"][0]["anchor"].as_str(),
        Some(sibling.as_str())
    );
    let square_sibling = both["concepts"][1]["anchor"].as_str().unwrap();
    assert!(
        ["triangle", "cross"].contains(&square_sibling) && square_sibling != sibling,
        "circle → {sibling}, square → {square_sibling}"
    );
    assert!(
        plain
            .iter()
            .any(|(p, a)| p == "a photo of bob" && a == "a photo of"),
        "{plain:?}"
    );
}
