//! Finding and loading ONNX Runtime: a missing or wrong library is an error saying how to get
//! it; the first library loaded stays for the process. One test (the runtime is per process).
//! Needs `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)`.
#![allow(unused_crate_dependencies, clippy::unwrap_used, clippy::expect_used)]
use fmn_onnx::{library_path, OnnxError, Runtime, ORT_ENV};
use std::path::{Path, PathBuf};

#[test]
fn missing_wrong_then_loaded_once() {
    let real = match std::env::var_os(ORT_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("ORT_DYLIB_PATH is not set: run `export ORT_DYLIB_PATH=$(scripts/install-onnxruntime.sh)`"),
    };
    let explicit = Path::new("/nonexistent/libonnxruntime.so.1.31.1");
    assert_eq!(
        library_path(Some(explicit)).unwrap(),
        explicit,
        "--ort-lib wins"
    );
    assert_eq!(library_path(None).unwrap(), real);

    let err = Runtime::load(Some(explicit)).err().unwrap();
    assert!(matches!(err, OnnxError::RuntimeMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("does not exist") && text.contains("install-onnxruntime.sh"),
        "{text}"
    );

    let t = tempfile::tempdir().unwrap();
    let fake = t.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not a library").unwrap();
    let text = Runtime::load(Some(&fake)).err().unwrap().to_string();
    assert!(
        text.contains("cannot load ONNX Runtime") && text.contains("--ort-lib"),
        "{text}"
    );

    let rt = Runtime::load(Some(&real)).unwrap();
    assert_eq!(rt.library(), real.canonicalize().unwrap());
    // One runtime per process: a later load gets the same one, whatever it names.
    let again = Runtime::load(Some(&fake)).unwrap();
    assert_eq!(again.library(), rt.library());
    assert!(!rt.build_info().is_empty());
}
