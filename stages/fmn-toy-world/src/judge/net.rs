//! The judge's network: four strided 3×3/4×4 convolutions (64→32→16→8→4 pixels), a hidden
//! layer of 128, and 15 logits in five heads (object, colour, striped, character, figure).
//!
//! The convolutions are [`fmn_ops::conv`]'s (NCHW, kernels `[out, in, k, k]` as stored). The
//! weights were trained channels-last, so the hidden layer reads the last feature map in
//! (y, x, channel) order: the map is permuted to that order before it is flattened, and the
//! stored `fc.weight` `[128, 4·4·64]` is used as it is, in training too.
use candle_core::{DType, Device, Result, Tensor, D};
use fmn_ops::conv::{conv2d_with, Conv2dSpec};
use rand::Rng;
use std::collections::HashMap;
use std::ops::Range;

/// (in, out, kernel, stride, padding) of each convolution.
pub(crate) const CONVS: [(usize, usize, usize, usize, usize); 4] = [
    (3, 16, 4, 2, 1),
    (16, 32, 3, 2, 1),
    (32, 48, 3, 2, 1),
    (48, 64, 3, 2, 1),
];
pub(crate) const FLAT: usize = 64 * 4 * 4;
pub(crate) const HIDDEN: usize = 128;
pub(crate) const OUTPUTS: usize = 15;

pub(crate) const OBJECT: Range<usize> = 0..4;
pub(crate) const COLOUR: Range<usize> = 4..8;
pub(crate) const STRIPED: Range<usize> = 8..10;
pub(crate) const CHARACTER: Range<usize> = 10..13;
pub(crate) const FIGURE: Range<usize> = 13..15;

/// Every parameter's name and shape, in a fixed order.
pub(crate) fn param_shapes() -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for (i, (cin, cout, k, _, _)) in CONVS.iter().enumerate() {
        v.push((format!("conv{i}.weight"), vec![*cout, *cin, *k, *k]));
        v.push((format!("conv{i}.bias"), vec![*cout]));
    }
    v.push(("fc.weight".into(), vec![HIDDEN, FLAT]));
    v.push(("fc.bias".into(), vec![HIDDEN]));
    v.push(("head.weight".into(), vec![OUTPUTS, HIDDEN]));
    v.push(("head.bias".into(), vec![OUTPUTS]));
    v
}

/// Fresh parameters drawn from `rng` (He-uniform weights, zero biases).
pub(crate) fn init_params<R: Rng + ?Sized>(
    rng: &mut R,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, shape) in param_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let fan_in: usize = shape[1..].iter().product();
            let gain = if name.starts_with("head") { 1.0 } else { 6.0 };
            let bound = (gain / fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

/// Checks that `params` holds every parameter with the right shape and dtype f32.
pub(crate) fn check_params(params: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
    for (name, shape) in param_shapes() {
        let t = params
            .get(&name)
            .ok_or_else(|| format!("missing tensor `{name}`"))?;
        if t.dims() != shape.as_slice() {
            return Err(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            ));
        }
        if t.dtype() != DType::F32 {
            return Err(format!(
                "tensor `{name}` has dtype {:?}, expected f32",
                t.dtype()
            ));
        }
    }
    Ok(())
}

/// Logits `(batch, OUTPUTS)` for images `(batch, 3, 64, 64)` scaled to -1..1.
pub(crate) fn forward(params: &HashMap<String, Tensor>, x: &Tensor) -> Result<Tensor> {
    let p = |name: &str| {
        params
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("judge: no parameter `{name}`")))
    };
    let mut h = x.clone();
    for (i, (_, _, _, stride, pad)) in CONVS.iter().enumerate() {
        let (w, b) = (p(&format!("conv{i}.weight"))?, p(&format!("conv{i}.bias"))?);
        h = conv2d_with(&h, w, Some(b), Conv2dSpec::new(*stride, *pad))?.relu()?;
    }
    // [B, 64, 4, 4] -> [B, 4, 4, 64]: the order `fc.weight`'s columns were trained in.
    let h = h.permute((0, 2, 3, 1))?.flatten_from(1)?;
    let h = h
        .matmul(&p("fc.weight")?.t()?)?
        .broadcast_add(p("fc.bias")?)?
        .relu()?;
    h.matmul(&p("head.weight")?.t()?)?
        .broadcast_add(p("head.bias")?)
}

/// Mean cross-entropy of one head over the samples where `mask` is 1.
pub(crate) fn head_loss(
    logits: &Tensor,
    head: Range<usize>,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let ls = candle_nn::ops::log_softmax(&logits.narrow(1, head.start, head.len())?, D::Minus1)?;
    let picked = ls.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (picked * mask)?.sum_all()? * (-1.0 / count as f64)
}
