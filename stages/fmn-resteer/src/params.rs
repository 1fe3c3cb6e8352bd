//! The trained part of the UNet: a delta per chosen weight (full, or `up · down` of rank r),
//! added to the frozen base weights each time the UNet is built.
use crate::config::ParamSet;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::unet::{UNet2DConditionModel, UNetConfig};
use std::collections::{BTreeMap, HashMap};

/// Whether the UNet weight `name` (diffusers naming) is trained under `set`.
pub fn selected(set: ParamSet, name: &str) -> bool {
    match set {
        ParamSet::All => true,
        ParamSet::Attn2 => name.contains(".attn2."),
        ParamSet::Attn2Kv => name.contains(".attn2.to_k.") || name.contains(".attn2.to_v."),
    }
}

enum Delta {
    Full(Var),
    /// `up: [out, r]` (starts at zero, so the delta does too), `down: [r, in]`.
    LowRank {
        up: Var,
        down: Var,
    },
}

pub struct Trainable {
    base: HashMap<String, Tensor>,
    deltas: BTreeMap<String, Delta>,
    config: UNetConfig,
}

impl Trainable {
    /// Deltas for the weights of `base` that `set` selects; with `lora_rank`, only matrices
    /// (2-D weights) are selected, as rank-r factors.
    pub fn new(
        base: HashMap<String, Tensor>,
        config: UNetConfig,
        set: ParamSet,
        lora_rank: Option<usize>,
        seed: u64,
    ) -> candle_core::Result<Self> {
        let mut names: Vec<&String> = base.keys().filter(|n| selected(set, n)).collect();
        names.sort();
        let mut rng = NoiseRng::new(seed);
        let mut deltas = BTreeMap::new();
        for name in names {
            let w = &base[name];
            let delta = match (lora_rank, w.dims()) {
                (None, _) => Delta::Full(Var::zeros(w.dims(), DType::F32, w.device())?),
                (Some(r), &[out, inp]) => {
                    let r = r.min(out).min(inp);
                    let down = (rng.randn(&[r, inp], w.device())? / (inp as f64).sqrt())?;
                    Delta::LowRank {
                        up: Var::zeros((out, r), DType::F32, w.device())?,
                        down: Var::from_tensor(&down)?,
                    }
                }
                (Some(_), _) => continue,
            };
            deltas.insert(name.clone(), delta);
        }
        Ok(Self {
            base,
            deltas,
            config,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }

    /// The optimiser's variables, named `name` or `name.lora_up` / `name.lora_down`.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (name, d) in &self.deltas {
            match d {
                Delta::Full(v) => out.push((name.clone(), v.clone())),
                Delta::LowRank { up, down } => {
                    out.push((format!("{name}.lora_up"), up.clone()));
                    out.push((format!("{name}.lora_down"), down.clone()));
                }
            }
        }
        out
    }

    /// The delta of `name` as a tensor in the autograd graph.
    pub fn delta(&self, name: &str) -> candle_core::Result<Option<Tensor>> {
        Ok(match self.deltas.get(name) {
            None => None,
            Some(Delta::Full(v)) => Some(v.as_tensor().clone()),
            Some(Delta::LowRank { up, down }) => Some(up.as_tensor().matmul(down.as_tensor())?),
        })
    }

    /// Sets the full delta of `name` to `value`; false when `name` is not trained as a full delta.
    pub fn set_full(&self, name: &str, value: &Tensor) -> candle_core::Result<bool> {
        match self.deltas.get(name) {
            Some(Delta::Full(v)) => {
                v.set(value)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub fn base(&self, name: &str) -> Option<&Tensor> {
        self.base.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.deltas.keys()
    }

    /// The UNet with every delta added to its base weight.
    pub fn unet(&self, device: &Device) -> candle_core::Result<UNet2DConditionModel> {
        self.build(self.weights()?, device)
    }

    /// The UNet with every delta added, and a frozen view of the same weights (detached: its
    /// backward computes no weight gradient, only its inputs'), for passes whose gradient
    /// reaches only their inputs, such as an attacker's token rows. Each `base + delta` is
    /// computed once for both.
    pub fn unet_and_frozen(
        &self,
        device: &Device,
    ) -> candle_core::Result<(UNet2DConditionModel, UNet2DConditionModel)> {
        let weights = self.weights()?;
        let frozen = weights
            .iter()
            .map(|(name, w)| (name.clone(), w.detach()))
            .collect();
        Ok((self.build(weights, device)?, self.build(frozen, device)?))
    }

    /// Every UNet weight: the base, plus its delta where one is trained.
    fn weights(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut weights = self.base.clone();
        for name in self.deltas.keys() {
            if let Some(d) = self.delta(name)? {
                weights.insert(name.clone(), (&self.base[name] + d)?);
            }
        }
        Ok(weights)
    }

    /// The UNet without deltas.
    pub fn base_unet(&self, device: &Device) -> candle_core::Result<UNet2DConditionModel> {
        self.build(self.base.clone(), device)
    }

    fn build(
        &self,
        weights: HashMap<String, Tensor>,
        device: &Device,
    ) -> candle_core::Result<UNet2DConditionModel> {
        UNet2DConditionModel::new(
            VarBuilder::from_tensors(weights, DType::F32, device),
            &self.config,
        )
    }

    /// The final deltas (detached) and the base values of the same tensors.
    pub fn export(
        &self,
    ) -> candle_core::Result<(BTreeMap<String, Tensor>, BTreeMap<String, Tensor>)> {
        let mut deltas = BTreeMap::new();
        let mut base = BTreeMap::new();
        for name in self.deltas.keys() {
            if let Some(d) = self.delta(name)? {
                deltas.insert(format!("unet.{name}"), d.detach());
                base.insert(format!("unet.{name}"), self.base[name].clone());
            }
        }
        Ok((base, deltas))
    }
}
