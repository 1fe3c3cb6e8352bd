//! The `fmn-patch/1` format: hashes against Python's hashlib, save/load round trips, refusals,
//! merging, applying, and parity with diffusers on a patch written by Python
//! (`tests/fixtures/gen/make_patch_fixtures.py`).
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use candle_core::{DType, Device, Tensor};
use fmn_sd::io::patch::{apply_to_component, fingerprint, tensor_hash, Concept, Patch, FORMAT};
use fmn_sd::sample::pipeline::StableDiffusion;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn concept(name: &str) -> Concept {
    Concept {
        name: name.into(),
        kind: "object".into(),
    }
}

const KEY_A: &str = "unet.a.weight";
const KEY_B: &str = "text_encoder.b.bias";

/// A patch on two tensors: `a` = [[1, 2], [3, 4]] (delta d_a), `b` = [0.5, -1, 2] (delta d_b).
fn small_patch(d_a: &[f32], d_b: &[f32], name: &str, dtype: DType) -> Patch {
    let base = BTreeMap::from([
        (KEY_A.to_string(), t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])),
        (KEY_B.to_string(), t(&[0.5, -1.0, 2.0], &[3])),
    ]);
    let deltas = BTreeMap::from([
        (KEY_A.to_string(), t(d_a, &[2, 2])),
        (KEY_B.to_string(), t(d_b, &[3])),
    ]);
    Patch::from_deltas(
        &base,
        deltas,
        vec![concept(name)],
        serde_json::json!({"steps": 35, "lr": 2e-5}),
        dtype,
    )
    .unwrap()
}

#[test]
fn tensor_hash_matches_hashlib() {
    // python: hashlib.sha256(struct.pack('<2f', 1.0, 2.0)).hexdigest()
    let want = "b9c80b5adeca450753a16950c3cc655d271f7bef7a485bc83f112b72fef21d37";
    assert_eq!(tensor_hash(&t(&[1.0, 2.0], &[2])).unwrap(), want);
    // f16 values are hashed after conversion to f32 (1.0 and 2.0 are exact in f16).
    let half = t(&[1.0, 2.0], &[1, 2]).to_dtype(DType::F16).unwrap();
    assert_eq!(tensor_hash(&half).unwrap(), want);
    // python: hashlib.sha256(struct.pack('<4f', 1.0, -0.5, 3.0, 0.25)).hexdigest()
    assert_eq!(
        tensor_hash(&t(&[1.0, -0.5, 3.0, 0.25], &[2, 2])).unwrap(),
        "9fc65e5bdc6c0e77ddb60c507daf03ab48ee8e3f32f13e130d274e307c07569c"
    );
    // A strided (transposed) view is hashed in its logical row-major order:
    // [[1, 3], [-0.5, 0.25]]ᵀ = [[1, -0.5], [3, 0.25]].
    let tr = t(&[1.0, 3.0, -0.5, 0.25], &[2, 2]).t().unwrap();
    assert_eq!(
        tensor_hash(&tr).unwrap(),
        "9fc65e5bdc6c0e77ddb60c507daf03ab48ee8e3f32f13e130d274e307c07569c"
    );
}

#[test]
fn fingerprint_matches_hashlib() {
    // python: hashlib.sha256(f"unet.a.weight:{h}\n".encode()).hexdigest(), h the hash above.
    let h = "b9c80b5adeca450753a16950c3cc655d271f7bef7a485bc83f112b72fef21d37";
    let map = BTreeMap::from([("unet.a.weight".to_string(), h.to_string())]);
    assert_eq!(
        fingerprint(&map),
        "bfe36b70aa0943b9ee70a3e991dfb2727f93c46f68a019e9252ba5547954d9b4"
    );
}

#[test]
fn save_load_round_trip_f16_and_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let d_a = [0.1f32, -0.2, 1e-3, 12.345];
    let d_b = [0.3f32, 0.0, -7.77];
    for (dtype, tol) in [(DType::F16, 2f32.powi(-11)), (DType::F32, 0.0)] {
        let p = small_patch(&d_a, &d_b, "cat", dtype);
        let file = tmp.path().join(format!("p-{dtype:?}.safetensors"));
        p.save(&file).unwrap();
        let q = Patch::load(&file).unwrap();
        assert_eq!(q.meta, p.meta);
        assert_eq!(q.meta.concepts, vec![concept("cat")]);
        assert_eq!(q.meta.settings["steps"], 35);
        for (key, want) in [(KEY_A, &d_a[..]), (KEY_B, &d_b[..])] {
            let got = vals(&q.deltas[key]);
            for (g, w) in got.iter().zip(want) {
                // f16 keeps 11 significant bits: relative rounding error ≤ 2^-11.
                assert!((g - w).abs() <= w.abs() * tol, "{key}: {g} vs {w}");
            }
        }
        // 7 values × 2 or 4 bytes.
        assert_eq!(q.size_bytes(), 7 * dtype.size_in_bytes());
        // The file holds what the format says, read with the safetensors crate directly.
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor(KEY_A).unwrap().shape(), &[2, 2]);
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["format"], FORMAT);
        let base: serde_json::Value = serde_json::from_str(&meta["base_hashes"]).unwrap();
        assert_eq!(
            base[KEY_A]["sha256"],
            tensor_hash(&t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])).unwrap()
        );
        assert_eq!(base[KEY_B]["shape"], serde_json::json!([3]));
    }
}

/// Rewrites a saved patch's tensors and metadata (as a corrupted or hand-edited file would be).
fn rewrite(
    file: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut HashMap<String, String>),
) {
    let bytes = std::fs::read(file).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    edit(&mut tensors, &mut meta);
    fmn_sd::io::weights::save_safetensors_atomic(file, &tensors, Some(meta)).unwrap();
}

fn load_err(file: &Path) -> String {
    format!("{}", Patch::load(file).unwrap_err())
}

#[test]
fn load_refuses_bad_files_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.safetensors");
    small_patch(&[1.0; 4], &[1.0; 3], "cat", DType::F16)
        .save(&good)
        .unwrap();
    let copy = |name: &str| {
        let f = tmp.path().join(name);
        std::fs::copy(&good, &f).unwrap();
        f
    };

    let f = copy("format.safetensors");
    rewrite(&f, |_, m| {
        m.insert("format".into(), "fmn-patch/0".into());
    });
    let e = load_err(&f);
    assert!(
        e.contains("format.safetensors") && e.contains("`fmn-patch/0`"),
        "{e}"
    );

    let f = copy("nan.safetensors");
    rewrite(&f, |ts, _| {
        let x = t(&[1.0, f32::NAN, 1.0], &[3]).to_dtype(DType::F16).unwrap();
        ts.insert(KEY_B.into(), x);
    });
    let e = load_err(&f);
    assert!(
        e.contains("nan.safetensors") && e.contains(KEY_B) && e.contains("non-finite"),
        "{e}"
    );

    let f = copy("shape.safetensors");
    rewrite(&f, |ts, _| {
        ts.insert(
            KEY_B.into(),
            t(&[1.0; 4], &[4]).to_dtype(DType::F16).unwrap(),
        );
    });
    let e = load_err(&f);
    assert!(
        e.contains(KEY_B) && e.contains("[4]") && e.contains("[3]"),
        "{e}"
    );

    let f = copy("fingerprint.safetensors");
    rewrite(&f, |_, m| {
        m.insert("base_fingerprint".into(), "00".repeat(32));
    });
    assert!(load_err(&f).contains("base_fingerprint"));

    let f = copy("missing.safetensors");
    rewrite(&f, |ts, _| {
        ts.remove(KEY_B);
    });
    assert!(load_err(&f).contains(KEY_B));

    let f = copy("plain.safetensors");
    rewrite(&f, |_, m| m.clear());
    assert!(load_err(&f).contains("`format` is missing"));

    let f = tmp.path().join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
    assert!(load_err(&f).contains("truncated.safetensors"));

    let e = load_err(&tmp.path().join("absent.safetensors"));
    assert!(e.contains("absent.safetensors"), "{e}");

    // A delta beyond f16's range (65504) is refused when saved as f16, and nothing is written.
    let big = small_patch(&[1e5, 0.0, 0.0, 0.0], &[0.0; 3], "cat", DType::F16);
    let f = tmp.path().join("big.safetensors");
    let e = big.save(&f).unwrap_err().to_string();
    assert!(e.contains(KEY_A) && e.contains("f32"), "{e}");
    assert!(!f.exists());

    // from_deltas refuses non-finite deltas and shape mismatches too.
    let base = BTreeMap::from([(KEY_A.to_string(), t(&[1.0; 4], &[2, 2]))]);
    let nan = BTreeMap::from([(KEY_A.to_string(), t(&[f32::INFINITY; 4], &[2, 2]))]);
    assert!(Patch::from_deltas(&base, nan, vec![], serde_json::json!({}), DType::F16).is_err());
    let wrong = BTreeMap::from([(KEY_A.to_string(), t(&[1.0; 4], &[4]))]);
    assert!(Patch::from_deltas(&base, wrong, vec![], serde_json::json!({}), DType::F16).is_err());
}

#[test]
fn merge_sums_deltas_and_refuses_other_bases() {
    let p = small_patch(&[1.0, 2.0, 3.0, 4.0], &[0.5, 0.5, 0.5], "cat", DType::F16);
    let q = small_patch(
        &[0.5, -1.0, 0.0, 0.25],
        &[1.0, 2.0, -3.0],
        "dog",
        DType::F32,
    );
    let m = Patch::merge(&[p.clone(), q]).unwrap();
    assert_eq!(vals(&m.deltas[KEY_A]), vec![1.5, 1.0, 3.0, 4.25]);
    assert_eq!(vals(&m.deltas[KEY_B]), vec![1.5, 2.5, -2.5]);
    assert_eq!(m.meta.concepts, vec![concept("cat"), concept("dog")]);
    assert_eq!(m.meta.delta_dtype, DType::F32);
    assert_eq!(m.meta.base_fingerprint, p.meta.base_fingerprint);
    assert_eq!(m.meta.settings.as_array().unwrap().len(), 2);

    // A patch of another key only: kept as is, and the fingerprint covers both keys' hashes.
    let base = BTreeMap::from([("unet.c.weight".to_string(), t(&[9.0], &[1]))]);
    let deltas = BTreeMap::from([("unet.c.weight".to_string(), t(&[-1.0], &[1]))]);
    let r = Patch::from_deltas(
        &base,
        deltas,
        vec![concept("car")],
        serde_json::json!({}),
        DType::F16,
    )
    .unwrap();
    let m = Patch::merge(&[p.clone(), r.clone()]).unwrap();
    assert_eq!(m.deltas.len(), 3);
    assert_eq!(vals(&m.deltas["unet.c.weight"]), vec![-1.0]);
    let mut hashes = p.meta.base_hashes.clone();
    hashes.extend(r.meta.base_hashes.clone());
    assert_eq!(m.meta.base_fingerprint, fingerprint(&hashes));

    // Same key, other base value.
    let base = BTreeMap::from([(KEY_A.to_string(), t(&[1.0, 2.0, 3.0, 4.5], &[2, 2]))]);
    let deltas = BTreeMap::from([(KEY_A.to_string(), t(&[1.0; 4], &[2, 2]))]);
    let other = Patch::from_deltas(
        &base,
        deltas,
        vec![concept("owl")],
        serde_json::json!({}),
        DType::F16,
    )
    .unwrap();
    let e = Patch::merge(&[p, other]).unwrap_err().to_string();
    assert!(
        e.contains(KEY_A) && e.contains("owl") && e.contains("another base"),
        "{e}"
    );
}

#[test]
fn apply_adds_deltas_after_checking_base_hashes() {
    let p = small_patch(
        &[0.5, -1.0, 0.0, 0.25],
        &[1.0, 2.0, -3.0],
        "cat",
        DType::F32,
    );
    let q = small_patch(&[1.0, 1.0, 1.0, 1.0], &[0.0; 3], "dog", DType::F32);
    let mut unet = HashMap::from([
        ("a.weight".to_string(), t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])),
        ("untouched".to_string(), t(&[7.0], &[1])),
    ]);
    let n = apply_to_component("unet", &mut unet, &[p.clone(), q]).unwrap();
    assert_eq!(n, 1);
    // 1+0.5+1, 2-1+1, 3+0+1, 4+0.25+1
    assert_eq!(vals(&unet["a.weight"]), vec![2.5, 2.0, 4.0, 5.25]);
    assert_eq!(vals(&unet["untouched"]), vec![7.0]);

    let mut te = HashMap::from([("b.bias".to_string(), t(&[0.5, -1.0, 2.0], &[3]))]);
    apply_to_component("text_encoder", &mut te, std::slice::from_ref(&p)).unwrap();
    assert_eq!(vals(&te["b.bias"]), vec![1.5, 1.0, -1.0]);

    // One base value changed: refused, naming patch, tensor and fingerprint.
    let mut te = HashMap::from([("b.bias".to_string(), t(&[0.5, -1.0, 2.001], &[3]))]);
    let e = apply_to_component("text_encoder", &mut te, std::slice::from_ref(&p))
        .unwrap_err()
        .to_string();
    assert!(e.contains("another base model") && e.contains(KEY_B), "{e}");
    assert!(e.contains(&p.meta.base_fingerprint), "{e}");
    // Nothing was changed by the failed call.
    assert_eq!(vals(&te["b.bias"]), vec![0.5, -1.0, 2.001]);

    let mut empty = HashMap::new();
    let e = apply_to_component("unet", &mut empty, &[p])
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no tensor") && e.contains(KEY_A), "{e}");
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let n = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (d / n).sqrt()
}

/// The patch written by Python loads (its hashes and fingerprint agree with ours), applies to
/// sd1-tiny, and the patched UNet and text encoder match diffusers' outputs with the same
/// deltas added (exactly, and through the LoRA file `fmn-patch lora` wrote).
#[test]
fn python_written_patch_matches_diffusers() {
    let dir = fixtures().join("patch");
    let patch = Patch::load(&dir.join("sd1-tiny-forget.safetensors")).unwrap();
    assert_eq!(patch.meta.concepts, vec![concept("red circle")]);
    let reference = candle_core::safetensors::load(
        dir.join("sd1-tiny-forget-reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let r = |k: &str| reference[k].clone();
    let base =
        StableDiffusion::load(&fixtures().join("sd1-tiny"), &Device::Cpu, DType::F32).unwrap();
    let patched = StableDiffusion::load_with_patches(
        &fixtures().join("sd1-tiny"),
        &Device::Cpu,
        DType::F32,
        &[patch],
    )
    .unwrap();
    let (sample, timestep, context) = (r("sample"), r("timestep"), r("context"));
    let ids = r("input_ids").to_dtype(DType::U32).unwrap();

    let unet_base = base.unet.forward(&sample, &timestep, &context).unwrap();
    let unet = patched.unet.forward(&sample, &timestep, &context).unwrap();
    let te_base = base.text_encoder.forward(&ids).unwrap();
    let te = patched.text_encoder.forward(&ids).unwrap();

    let stats = [
        ("unet base", rel_diff(&unet_base, &r("unet_base"))),
        ("unet exact", rel_diff(&unet, &r("unet_exact"))),
        ("unet lora", rel_diff(&unet, &r("unet_lora"))),
        ("unet moved", rel_diff(&unet, &r("unet_base"))),
        ("te base", rel_diff(&te_base, &r("te_base"))),
        ("te exact", rel_diff(&te, &r("te_exact"))),
        ("te lora", rel_diff(&te, &r("te_lora"))),
        ("te moved", rel_diff(&te, &r("te_base"))),
    ];
    eprintln!("{stats:?}");
    let s: HashMap<_, _> = stats.into_iter().collect();
    assert!(s["unet base"] < 1e-5 && s["te base"] < 1e-5, "{s:?}");
    // Our patched model = diffusers with the same deltas added.
    assert!(s["unet exact"] < 1e-5 && s["te exact"] < 1e-5, "{s:?}");
    // The patch really moves the outputs, ...
    assert!(s["unet moved"] > 1e-2 && s["te moved"] > 1e-2, "{s:?}");
    // ... and diffusers' LoRA (rank 3 of rank-3 + 1% noise deltas) lands within the
    // low-rank error, far closer than the unpatched model.
    assert!(s["unet lora"] < 0.05 * s["unet moved"], "{s:?}");
    assert!(s["te lora"] < 0.05 * s["te moved"], "{s:?}");
}

/// A patch made against one base value changed is refused when the model is loaded.
#[test]
fn load_with_patches_refuses_another_base() {
    let model = fixtures().join("sd1-tiny");
    let file = model.join("unet/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let w = &tensors[name];
    let mut v = vals(w);
    v[5] += 1e-3;
    let key = format!("unet.{name}");
    let base = BTreeMap::from([(key.clone(), t(&v, w.dims()))]);
    let deltas = BTreeMap::from([(
        key.clone(),
        Tensor::zeros(w.shape(), DType::F32, &Device::Cpu).unwrap(),
    )]);
    let p = Patch::from_deltas(
        &base,
        deltas,
        vec![concept("cat")],
        serde_json::json!({}),
        DType::F16,
    )
    .unwrap();
    let e = match StableDiffusion::load_with_patches(&model, &Device::Cpu, DType::F32, &[p]) {
        Ok(_) => panic!("a patch for another base was applied"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("another base model") && e.contains(&key) && e.contains("cat"),
        "{e}"
    );
}
