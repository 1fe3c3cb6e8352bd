//! YAML config readers on arbitrary text: `merge_valid` with the re-steering and inversion
//! settings, `load_yaml`, and evaluation suites (`Suite::load`). Errors name the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fmn_fuzz::write("config.yaml", data);
    if let Err(e) = fmn_core::merge_valid::<fmn_resteer::ResteerConfig>(Some(&path), &()) {
        fmn_fuzz::names_file(&e.to_string(), &path);
    }
    if let Err(e) = fmn_core::merge_valid::<fmn_invert::InvertConfig>(Some(&path), &()) {
        fmn_fuzz::names_file(&e.to_string(), &path);
    }
    if let Err(e) = fmn_core::load_yaml::<fmn_resteer::ResteerConfig>(&path) {
        fmn_fuzz::names_file(&e.to_string(), &path);
    }
    match fmn_eval::suite::Suite::load(&path) {
        Ok(s) => {
            let _ = s.prompts();
        }
        Err(e) => fmn_fuzz::names_file(&e.to_string(), &path),
    }
});
