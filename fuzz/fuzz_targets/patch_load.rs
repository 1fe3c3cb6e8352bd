//! `Patch::load` on arbitrary bytes: a patch or an error naming the file, never a panic; what
//! it loads can be described and sized.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fmn_fuzz::write("forget.safetensors", data);
    match fmn_sd::io::patch::Patch::load(&path) {
        Ok(p) => {
            let _ = p.describe();
            let _ = p.size_bytes();
            let _ = fmn_sd::io::patch::check_components(std::slice::from_ref(&p));
        }
        Err(e) => fmn_fuzz::names_file(&e.to_string(), &path),
    }
});
