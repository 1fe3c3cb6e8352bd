//! Training and evaluating the judge.
//!
//! Training draws fresh images every step (so there is no overfitting to a finite set):
//! 12% garbage with no figure, 8% decoys (plain yellow circles and blue triangles without a
//! face, so that the character head must look at the face), the rest from the training
//! distribution with more characters and stripes, and wider sizes (22-52 px) and rotations
//! (±20°) than [`SceneSpec::default`]; 85% of images
//! are degraded by [`Augment::default`]. Everything is drawn from ChaCha8 generators seeded
//! from the one seed, so a run is reproducible.
use super::{images_to_tensor, net, Judge, JudgeError};
use crate::augment::{augment, garbage, Augment};
use crate::render::render;
use crate::scene::{Character, Scene, SceneSpec};
use crate::scene_rng;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Mixed into the training seed so that training never draws the images `fmn-toy render`
/// draws for a small seed.
const TRAIN_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainOptions {
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    /// Peak learning rate of AdamW (linear warm-up, cosine decay to 5%).
    pub lr: f64,
    /// Held-out seed and number of renders for the evaluation after training.
    pub eval_seed: u64,
    pub eval_count: usize,
    /// Hide the progress bar.
    pub quiet: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            steps: 1500,
            batch: 64,
            lr: 3e-3,
            eval_seed: 1_000_003,
            eval_count: 400,
            quiet: false,
        }
    }
}

/// Share of right answers per attribute. An answer counts as right only if the judge is sure
/// and correct.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    /// Rendered scenes judged.
    pub count: usize,
    pub object: f32,
    pub colour: f32,
    pub striped: f32,
    pub character: f32,
    /// Share of scenes where a figure was found.
    pub figure: f32,
    /// Garbage images judged (a quarter of `count`) and the share reported as unknown.
    pub garbage_count: usize,
    pub garbage_rejected: f32,
}

impl Accuracy {
    /// The lowest of object, colour, striped and character.
    pub fn min_attribute(&self) -> f32 {
        self.object
            .min(self.colour)
            .min(self.striped)
            .min(self.character)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    pub options: TrainOptions,
    pub seconds: f32,
    /// Mean loss over the last 50 steps.
    pub final_loss: f32,
    /// On clean held-out renders, and on the same renders degraded by `Augment::default().always()`.
    pub clean: Accuracy,
    pub degraded: Accuracy,
}

/// Labels of one training image: object, colour, striped, character (0 none, 1 bob, 2 kiki);
/// `None` for garbage.
type Labels = Option<[u32; 4]>;

fn labels(scene: &Scene) -> [u32; 4] {
    let character = scene.character.map_or(0, |c| 1 + c.index() as u32);
    [
        scene.object.index() as u32,
        scene.colour.index() as u32,
        scene.striped as u32,
        character,
    ]
}

fn training_sample<R: Rng + ?Sized>(rng: &mut R, aug: &Augment) -> (RgbImage, Labels) {
    let u: f32 = rng.random();
    let (image, labels) = if u < 0.12 {
        (garbage(rng), None)
    } else {
        let spec = if u < 0.20 {
            // Decoys: a character's body without its face.
            let c = Character::ALL[rng.random_range(0..2)];
            SceneSpec {
                object: Some(c.object()),
                colour: Some(c.colour()),
                striped: Some(false),
                size: (22.0, 52.0),
                max_rotation: 20.0,
                ..SceneSpec::default()
            }
        } else {
            // Wider sizes and rotations than the default, for robustness to the sizes a
            // generative model gets slightly wrong.
            SceneSpec {
                character_share: 0.3,
                stripes_share: 0.35,
                size: (22.0, 52.0),
                character_size: (30.0, 52.0),
                max_rotation: 20.0,
                ..SceneSpec::default()
            }
        };
        let scene = Scene::random(rng, &spec);
        (render(&scene).0, Some(labels(&scene)))
    };
    if rng.random::<f32>() < 0.85 {
        (augment(&image, rng, aug), labels)
    } else {
        (image, labels)
    }
}

fn batch_loss(
    params: &HashMap<String, Tensor>,
    images: &[RgbImage],
    labels: &[Labels],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let refs: Vec<&RgbImage> = images.iter().collect();
    let x = images_to_tensor(&refs, device)?;
    let logits = net::forward(params, &x)?;
    let n = labels.len();
    let column = |k: usize| -> Vec<u32> { labels.iter().map(|l| l.map_or(0, |l| l[k])).collect() };
    let mask: Vec<f32> = labels.iter().map(|l| l.is_some() as u32 as f32).collect();
    let mask = Tensor::from_vec(mask, n, device)?;
    let ones = Tensor::ones(n, candle_core::DType::F32, device)?;
    let figure: Vec<u32> = labels.iter().map(|l| l.is_some() as u32).collect();
    let mut loss = net::head_loss(
        &logits,
        net::FIGURE,
        &Tensor::from_vec(figure, n, device)?,
        &ones,
    )?;
    for (k, head) in [net::OBJECT, net::COLOUR, net::STRIPED, net::CHARACTER]
        .into_iter()
        .enumerate()
    {
        let t = Tensor::from_vec(column(k), n, device)?;
        loss = (loss + net::head_loss(&logits, head, &t, &mask)?)?;
    }
    Ok(loss)
}

/// Trains a judge from scratch; reproducible for `opts.seed` (and the same thread count).
pub fn train(opts: &TrainOptions) -> Result<(Judge, TrainReport), JudgeError> {
    let device = Device::Cpu;
    let start = Instant::now();
    let mut init_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ TRAIN_SALT);
    init_rng.set_stream(1);
    let mut data_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ TRAIN_SALT);
    data_rng.set_stream(2);

    let init = net::init_params(&mut init_rng, &device)?;
    let mut vars = Vec::new();
    let mut params = HashMap::new();
    for (name, _) in net::param_shapes() {
        let var = Var::from_tensor(&init[&name])?;
        params.insert(name, var.as_tensor().clone());
        vars.push(var);
    }
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 1e-4,
            ..ParamsAdamW::default()
        },
    )?;
    let aug = Augment::default();
    let bar = fmn_cli::progress::bar(opts.steps as u64, "training", opts.quiet);
    let warmup = (opts.steps / 20).max(1);
    let mut recent = Vec::new();
    for step in 0..opts.steps {
        let lr = if step < warmup {
            opts.lr * (step + 1) as f64 / warmup as f64
        } else {
            let t = (step - warmup) as f64 / (opts.steps - warmup).max(1) as f64;
            opts.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
        };
        opt.set_learning_rate(lr);
        let (images, labels): (Vec<_>, Vec<_>) = (0..opts.batch)
            .map(|_| training_sample(&mut data_rng, &aug))
            .unzip();
        let loss = batch_loss(&params, &images, &labels, &device)?;
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()?;
        recent.push(l);
        if recent.len() > 50 {
            recent.remove(0);
        }
        if step % 10 == 0 {
            bar.set_message(format!(
                "loss {:.3}",
                recent.iter().sum::<f32>() / recent.len() as f32
            ));
            tracing::debug!(
                step,
                loss = l,
                lr,
                seconds = start.elapsed().as_secs_f32(),
                "training"
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let final_loss = recent.iter().sum::<f32>() / recent.len().max(1) as f32;
    let params: HashMap<String, Tensor> = vars
        .iter()
        .zip(net::param_shapes())
        .map(|(v, (name, _))| (name, v.as_tensor().detach()))
        .collect();
    let mut judge = Judge::from_params(params, HashMap::new());
    let clean = evaluate(&judge, opts.eval_seed, opts.eval_count, &Augment::none())?;
    let degraded = evaluate(
        &judge,
        opts.eval_seed,
        opts.eval_count,
        &Augment::default().always(),
    )?;
    let report = TrainReport {
        options: opts.clone(),
        seconds: start.elapsed().as_secs_f32(),
        final_loss,
        clean,
        degraded,
    };
    let mut meta = HashMap::new();
    meta.insert("format".into(), "fmn-toy judge v1".into());
    meta.insert("fmn_version".into(), crate::VERSION.into());
    // Without the run time, so that the file is byte-for-byte reproducible from the seed.
    let mut recorded =
        serde_json::to_value(&report).map_err(|e| JudgeError::Record(e.to_string()))?;
    if let Some(m) = recorded.as_object_mut() {
        m.remove("seconds");
        if let Some(o) = m.get_mut("options").and_then(|o| o.as_object_mut()) {
            o.remove("quiet");
        }
    }
    meta.insert("train_report".into(), recorded.to_string());
    judge.metadata = meta;
    Ok((judge, report))
}

/// Accuracy of `judge` on `count` scenes of the default distribution drawn with
/// `scene_rng(seed, i)`, degraded by `aug`, and on `count / 4` garbage images.
pub fn evaluate(
    judge: &Judge,
    seed: u64,
    count: usize,
    aug: &Augment,
) -> Result<Accuracy, JudgeError> {
    let mut scenes = Vec::with_capacity(count);
    let mut images = Vec::with_capacity(count);
    for i in 0..count {
        let mut rng = scene_rng(seed, i as u64);
        let scene = Scene::random(&mut rng, &SceneSpec::default());
        let image = render(&scene).0;
        images.push(augment(&image, &mut rng, aug));
        scenes.push(scene);
    }
    let verdicts = judge.judge_batch(&images)?;
    let share = |f: &dyn Fn(&Scene, &super::Verdict) -> bool| {
        scenes
            .iter()
            .zip(&verdicts)
            .filter(|(s, v)| f(s, v))
            .count() as f32
            / count.max(1) as f32
    };
    let garbage_count = count / 4;
    let junk: Vec<RgbImage> = (0..garbage_count)
        .map(|i| {
            let mut rng = scene_rng(seed, (count + i) as u64);
            let g = garbage(&mut rng);
            augment(&g, &mut rng, aug)
        })
        .collect();
    let rejected = judge
        .judge_batch(&junk)?
        .iter()
        .filter(|v| v.is_unknown())
        .count();
    Ok(Accuracy {
        count,
        object: share(&|s, v| v.object.label() == Some(s.object)),
        colour: share(&|s, v| v.colour.label() == Some(s.colour)),
        striped: share(&|s, v| v.striped.label() == Some(s.striped)),
        character: share(&|s, v| v.character.label() == Some(s.character)),
        figure: share(&|_, v| v.figure),
        garbage_count,
        garbage_rejected: rejected as f32 / garbage_count.max(1) as f32,
    })
}

/// Writes `judge`'s weights and metadata (plus `extra` metadata) to `path` atomically.
pub fn save(judge: &Judge, path: &Path, extra: &[(&str, String)]) -> std::io::Result<()> {
    let mut meta = judge.metadata().clone();
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    let mut tensors: Vec<(String, &Tensor)> =
        judge.params().iter().map(|(k, v)| (k.clone(), v)).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = safetensors::serialize(tensors, Some(meta)).map_err(std::io::Error::other)?;
    let bytes = sorted_header(&bytes)?;
    fmn_core::write_atomic(path, |f| f.write_all(&bytes))
}

/// Rewrites a safetensors file's JSON header with sorted keys (the metadata is a `HashMap`,
/// whose order changes from run to run), so that the file is byte-for-byte reproducible.
fn sorted_header(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = |what: &str| std::io::Error::other(format!("safetensors: {what}"));
    let len: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("short"))?;
    let end = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| bad("short header"))?;
    let (header, data) = (&bytes[8..end], &bytes[end..]);
    // serde_json's map is ordered by key.
    let value: serde_json::Value = serde_json::from_slice(header).map_err(std::io::Error::other)?;
    let mut header = serde_json::to_vec(&value).map_err(std::io::Error::other)?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
}
