//! What the SD-size benches share.
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

/// Random f32 weights for the model `build` makes (through a VarMap, with its init hints),
/// returned as plain tensors: built from the VarMap's variables the model's forward would keep
/// its whole graph for a backward.
pub fn random_weights(
    dev: &Device,
    build: impl Fn(VarBuilder) -> Result<()>,
) -> Result<HashMap<String, Tensor>> {
    let map = VarMap::new();
    build(VarBuilder::from_varmap(&map, DType::F32, dev))?;
    let data = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("the VarMap's lock is poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}
