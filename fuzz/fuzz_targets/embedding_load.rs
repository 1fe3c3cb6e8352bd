//! `TokenEmbedding::load` on arbitrary bytes, which picks one of the three layouts (fmn's,
//! AUTOMATIC1111's `emb_params`, diffusers' one tensor) from the content: an embedding or an
//! error naming the file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = fmn_fuzz::write("concept.safetensors", data);
    match fmn_sd::io::embedding::TokenEmbedding::load(&path) {
        Ok(e) => {
            assert_eq!(e.tokens.len(), e.vectors.dims()[0]);
            assert!(e.width() > 0);
            let _ = e.expand("a photo of concept");
            let _ = e.concept_text();
        }
        Err(e) => fmn_fuzz::names_file(&e.to_string(), &path),
    }
});
