//! Single-file checkpoints on arbitrary bytes: `SingleFile::open` (the safetensors header, the
//! SD 1.x / 2.x inference from tensor names and shapes, the key map), then the configs and
//! tensors of what opens; and `keys::map_key` on every tensor name of the header and on the
//! input itself as a key, under ordinary and extreme layouts. Never a panic; errors of `open`
//! name the file.
#![no_main]
use fmn_sd::io::single_file::keys::{map_key, Layout, Take, TextLayout};
use fmn_sd::io::single_file::{SingleFile, SingleFileOptions};
use libfuzzer_sys::fuzz_target;

fn layouts(seed: &[u8]) -> Vec<Layout> {
    let b = |i: usize| seed.get(i).copied().unwrap_or(0);
    let wide = |v: u8| if v == 255 { usize::MAX } else { v as usize };
    let mut out = Vec::new();
    for text in [TextLayout::Clip, TextLayout::OpenClip] {
        out.push(Layout {
            text,
            unet_layers_per_block: 2,
            vae_up_blocks: 4,
            text_layers: 12,
        });
        out.push(Layout {
            text,
            unet_layers_per_block: wide(b(0)),
            vae_up_blocks: wide(b(1)),
            text_layers: wide(b(2)),
        });
        out.push(Layout {
            text,
            unet_layers_per_block: usize::MAX,
            vae_up_blocks: 0,
            text_layers: usize::MAX,
        });
    }
    out
}

fn map_all(key: &str, layouts: &[Layout]) {
    for layout in layouts {
        if let Ok(mapped) = map_key(key, layout) {
            for m in mapped {
                assert!(matches!(m.component, "unet" | "vae" | "text_encoder"));
                if let Take::Third(part) = m.take {
                    assert!(part < 3);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let layouts = layouts(data);
    map_all(
        &String::from_utf8_lossy(data.get(3..).unwrap_or_default()),
        &layouts,
    );
    if let Ok((_, header)) = safetensors::SafeTensors::read_metadata(data) {
        let tensors = header.tensors();
        for name in tensors.keys() {
            map_all(name, &layouts);
        }
    }

    let path = fmn_fuzz::write("checkpoint.safetensors", data);
    match SingleFile::open(&path, &SingleFileOptions::default()) {
        Ok(f) => {
            let _ = f.text_layout();
            let _ = f.unet_config();
            let _ = f.vae_config();
            let _ = f.text_encoder_config();
            let _ = f.scheduler_config();
            for component in ["unet", "vae", "text_encoder"] {
                let _ = f.component_tensors(
                    component,
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                );
            }
        }
        Err(e) => fmn_fuzz::names_file(&e.to_string(), &path),
    }
});
