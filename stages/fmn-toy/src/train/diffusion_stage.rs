//! Stage 2: the text encoder and the UNet learn to denoise the cached latents (epsilon or,
//! with `zero_terminal_snr`, velocity prediction), with captions dropped to "" at
//! `cfg_dropout` for classifier-free guidance.
use super::attention_term::{attention_term, selectors};
use super::split_batch::PartThreads;
use super::vae_stage::batch_indices;
use super::{architecture, step_seed, Checkpoints, Dataset, TrainSettings};
use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use fmn_ops::noise::NoiseRng;
use fmn_sd::models::clip::{ClipTextConfig, ClipTextModel};
use fmn_sd::models::probes::AttentionRecorder;
use fmn_sd::models::unet::{UNet2DConditionModel, UNetConfig};
use fmn_sd::sample::scheduler::SchedulerConfig;
use fmn_sd::train::init::SeededVars;
use fmn_sd::train::noise_schedule::NoiseSchedule;
use fmn_sd::train::optim::{AdamW, AdamWConfig};

pub const STAGE: &str = "unet";

pub struct TrainedDiffusion {
    pub unet_vars: Vec<(String, Var)>,
    pub text_vars: Vec<(String, Var)>,
    pub final_loss: f64,
}

pub fn train(
    s: &TrainSettings,
    data: &Dataset,
    latents: &Tensor,
    ckpt: &Checkpoints,
    on_step: &mut dyn FnMut(usize, f64),
) -> Result<TrainedDiffusion> {
    let device = latents.device().clone();
    let unet_map = SeededVars::new(step_seed(s.seed, 2, usize::MAX));
    let text_map = SeededVars::new(step_seed(s.seed, 3, usize::MAX));
    let unet_cfg: UNetConfig = serde_json::from_value(architecture::unet_config())?;
    let text_cfg: ClipTextConfig = serde_json::from_value(architecture::text_encoder_config())?;
    let unet = UNet2DConditionModel::new(unet_map.var_builder(DType::F32, &device), &unet_cfg)?;
    let text = ClipTextModel::new(text_map.var_builder(DType::F32, &device), &text_cfg)?;
    let unet_vars = unet_map.sorted();
    let text_vars = text_map.sorted();
    let named: Vec<(String, Var)> = unet_vars
        .iter()
        .map(|(k, v)| (format!("unet/{k}"), v.clone()))
        .chain(
            text_vars
                .iter()
                .map(|(k, v)| (format!("text_encoder/{k}"), v.clone())),
        )
        .collect();
    let mut opt = AdamW::new(
        named.clone(),
        AdamWConfig {
            lr: s.unet_lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let start = ckpt.restore(s, STAGE, &named, &mut opt)?;
    let sched_cfg = SchedulerConfig::from_map(
        architecture::scheduler_config(s.zero_terminal_snr)
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let schedule = NoiseSchedule::from_config(&sched_cfg)?;
    let train_steps = schedule.num_train_timesteps();
    let threads = PartThreads::new(s.batch_parts)?;
    let mut last = f64::NAN;
    for step in start..s.unet_steps {
        let mut rng = NoiseRng::new(step_seed(s.seed, 2, step));
        let (idx_vec, idx) = batch_indices(&mut rng, data.len(), s.unet_batch, &device)?;
        let x0 = latents.index_select(&idx, 0)?;
        let noise = rng.randn(x0.dims(), &device)?;
        let t: Vec<usize> = (0..idx_vec.len())
            .map(|_| rng.below(0, train_steps))
            .collect();
        let x_t = schedule.add_noise(&x0, &noise, &t)?;
        let target = schedule.target(&x0, &noise, &t)?;
        let mut rows = Vec::with_capacity(idx_vec.len());
        let mut subjects = Vec::with_capacity(idx_vec.len());
        for &i in &idx_vec {
            let row = if rng.uniform() < s.cfg_dropout {
                subjects.push(None);
                Tensor::new(data.empty_ids.as_slice(), &device)?
            } else {
                subjects.push(data.subject_positions[i as usize]);
                data.ids.get(i as usize)?
            };
            rows.push(row);
        }
        let ids = Tensor::stack(&rows, 0)?;
        let t_tensor = Tensor::new(
            t.iter().map(|&v| v as f32).collect::<Vec<_>>().as_slice(),
            &device,
        )?;
        let row_weights = if s.min_snr_gamma > 0.0 {
            let w: Vec<f32> = t
                .iter()
                .map(|&ti| s.timestep_weight(schedule.alphas_cumprod()[ti] as f64) as f32)
                .collect();
            Some(Tensor::new(w.as_slice(), &device)?)
        } else {
            None
        };
        let with_term = step >= s.attention_term_start();
        let batch_masks = if with_term || s.figure_edge_weight > 0.0 {
            Some(data.masks.index_select(&idx, 0)?)
        } else {
            None
        };
        let cell_weights = match &batch_masks {
            Some(m) if s.figure_edge_weight > 0.0 => {
                let (h, w) = (x0.dim(2)?, x0.dim(3)?);
                Some(outline_weights(m, h, w, s.figure_edge_weight)?)
            }
            _ => None,
        };
        let masks = if with_term { batch_masks } else { None };
        let keep: Vec<f32> = subjects.iter().map(|p| p.is_some() as u8 as f32).collect();
        let kept_total = keep.iter().sum::<f32>().max(1.0) as f64;
        let batch = idx_vec.len();
        let log_term = with_term && (step + 1) % s.checkpoint_every == 0;
        let (grads, loss) = threads.summed_grads(&named, batch, |r| {
            let part = |x: &Tensor| x.narrow(0, r.start, r.len());
            let context = text.forward(&part(&ids)?)?;
            let recorder = with_term.then(AttentionRecorder::new);
            let pred = unet.forward_with_probe(
                &part(&x_t)?,
                &part(&t_tensor)?,
                &context,
                recorder.as_ref(),
            )?;
            let mut sq = (pred - part(&target)?)?.sqr()?;
            if let Some(w) = &cell_weights {
                sq = sq.broadcast_mul(&part(w)?)?;
            }
            let mut loss = match &row_weights {
                // The part's share of the whole batch's mean squared error.
                None => (sq.mean_all()? * (r.len() as f64 / batch as f64))?,
                // Σ over the part's rows of weight · row mean, over the whole batch's rows.
                Some(w) => {
                    let per_row = sq.flatten_from(1)?.mean(1)?;
                    ((per_row * part(w)?)?.sum_all()? / batch as f64)?
                }
            };
            if let (Some(recorder), Some(masks)) = (recorder, &masks) {
                let part_keep = &keep[r.clone()];
                let term = attention_term(
                    &recorder.take(),
                    &selectors(&subjects[r.clone()], data.ids.dim(1)?, &device)?,
                    &part(masks)?,
                    &Tensor::new(part_keep, &device)?,
                )?;
                // attention_term averages over the part's kept captions; re-weighted, the
                // parts sum to the average over the whole batch's.
                let share = part_keep.iter().sum::<f32>() as f64 / kept_total;
                if log_term {
                    tracing::info!(step, rows = ?r, miss = term.to_scalar::<f32>()?, "attention term");
                }
                loss = (loss + (term * (s.attention_weight * share))?)?;
            }
            Ok(loss)
        })?;
        opt.config.lr = s.unet_lr_at(step);
        opt.step(&grads, Some(1.0))?;
        last = loss;
        on_step(step, last);
        if (step + 1) % s.checkpoint_every == 0 || step + 1 == s.unet_steps {
            ckpt.save(s, STAGE, step + 1, &named, &opt)?;
        }
    }
    Ok(TrainedDiffusion {
        unet_vars,
        text_vars,
        final_loss: last,
    })
}

/// `[B, 1, h, w]` loss weights `1 + k · 4m(1 − m)` from the figure masks `[B, 1, H, W]`, `m`
/// being the share of each latent cell's pixels on the figure.
fn outline_weights(masks: &Tensor, h: usize, w: usize, k: f64) -> Result<Tensor> {
    let m = fmn_sd::models::probes::resize_mask(masks, h, w)?;
    let one_minus = m.affine(-1.0, 1.0)?;
    Ok((m * one_minus)?.affine(4.0 * k, 1.0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn outline_cells_weigh_more_than_interior_and_background() {
        // One 4×8 mask → 1×2 cells: the left cell fully covered, the right one a quarter.
        let mut px = vec![0f32; 32];
        for row in 0..4 {
            for col in 0..4 {
                px[row * 8 + col] = 1.0;
            }
            px[row * 8 + 4] = 1.0;
        }
        let masks = Tensor::from_vec(px, (1, 1, 4, 8), &Device::Cpu).unwrap();
        let w: Vec<f32> = super::outline_weights(&masks, 1, 2, 2.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Covered: 1 + 2·4·1·0 = 1; a quarter: 1 + 2·4·0.25·0.75 = 2.5.
        assert!(
            (w[0] - 1.0).abs() < 1e-6 && (w[1] - 2.5).abs() < 1e-6,
            "{w:?}"
        );
    }
}
