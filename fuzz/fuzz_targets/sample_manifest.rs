//! `SampleDir::load` with arbitrary bytes as `manifest.json`: a folder or an error naming the
//! manifest's folder, never a panic; a loaded folder pairs with itself and shards.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = fmn_fuzz::scratch().join("samples");
    fmn_fuzz::write("samples/manifest.json", data);
    match fmn_eval::samples::SampleDir::load(&dir, "before") {
        Ok(d) => {
            let pairs = fmn_eval::samples::pair(&d, &d).expect("a folder pairs with itself");
            let shard = d.manifest.shard.unwrap_or(fmn_core::Shard::ALL);
            let _ = fmn_eval::samples::shard_pairs(pairs, shard);
        }
        Err(e) => fmn_fuzz::names_file(&format!("{e:#}"), &dir),
    }
});
