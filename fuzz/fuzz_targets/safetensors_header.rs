//! `validate_safetensors` and `read_metadata` on arbitrary bytes: errors, never panics, and
//! every error names the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fmn_fuzz::write("model.safetensors", data);
    if let Err(e) = fmn_sd::io::weights::validate_safetensors(&path) {
        fmn_fuzz::names_file(&e.to_string(), &path);
    }
    if let Err(e) = fmn_sd::io::weights::read_metadata(&path) {
        fmn_fuzz::names_file(&e.to_string(), &path);
    }
});
