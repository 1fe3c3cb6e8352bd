//! The toy segmenter: a small encoder-decoder CNN that finds the figure in toy-world renders,
//! trained with candle and exported to ONNX with [`crate::onnx`] (`fmn-toy train-segmenter`;
//! `fmn-segment` runs the exported model through ONNX Runtime).
//!
//! Architecture (input `[N, 3, 64, 64]`, values `(pixel / 255 − 0.5) / 0.5`):
//!
//! ```text
//! e1 = relu(conv3(relu(conv3(x))))                         c1 × 64²
//! e2 = relu(conv3(relu(conv3 stride 2(e1))))               c2 × 32²
//! e3 = relu(conv3 dilation 2(relu(conv3 stride 2(e2))))    c3 × 16²
//! d2 = relu(conv3(concat(up2(e3), e2)))                    c2 × 32²
//! d1 = relu(conv3(concat(up2(d2), e1)))                    c1 × 64²
//! mask = sigmoid(conv1(d1))                                1 × 64²
//! ```
use crate::onnx::{self, ConvSpec, Dim, GraphBuilder, ModelProto};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fmn_ops::conv::{conv2d_with, Conv2dSpec};
use fmn_toy_world::render_folder::{mask_iou, Sample};
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::{Path, PathBuf};

/// Why the toy segmenter could not be trained, exported or read back.
#[derive(Debug, thiserror::Error)]
pub enum SegmenterError {
    #[error("toy segmenter: {0}")]
    Train(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = SegmenterError> = std::result::Result<T, E>;

/// The toy segmenter's input side.
pub const SIZE: usize = 64;
/// Input and output names of the exported model.
pub const INPUT: &str = "image";
pub const OUTPUT: &str = "mask";

/// Channel widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Widths {
    pub c1: usize,
    pub c2: usize,
    pub c3: usize,
}

impl Default for Widths {
    fn default() -> Self {
        Self {
            c1: 8,
            c2: 16,
            c3: 32,
        }
    }
}

struct Layer {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    spec: ConvSpec,
}

fn layers(w: Widths) -> Vec<Layer> {
    let l = |name, c_in, c_out, k, stride, padding, dilation| Layer {
        name,
        c_in,
        c_out,
        k,
        spec: ConvSpec {
            stride,
            padding,
            dilation,
        },
    };
    vec![
        l("e1a", 3, w.c1, 3, 1, 1, 1),
        l("e1b", w.c1, w.c1, 3, 1, 1, 1),
        l("e2a", w.c1, w.c2, 3, 2, 1, 1),
        l("e2b", w.c2, w.c2, 3, 1, 1, 1),
        l("e3a", w.c2, w.c3, 3, 2, 1, 1),
        l("e3b", w.c3, w.c3, 3, 1, 2, 2),
        l("d2", w.c3 + w.c2, w.c2, 3, 1, 1, 1),
        l("d1", w.c2 + w.c1, w.c1, 3, 1, 1, 1),
        l("head", w.c1, 1, 1, 1, 0, 1),
    ]
}

/// The network's weights.
pub struct ToyNet {
    widths: Widths,
    /// Per layer (in [`layers`] order): weight `[c_out, c_in, k, k]` and bias `[c_out]`.
    params: Vec<(Var, Var)>,
}

fn up2(x: &Tensor) -> candle_core::Result<Tensor> {
    // Nearest-neighbour ×2 through broadcasting (its gradient is a plain sum).
    let (n, c, h, w) = x.dims4()?;
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, 2, w, 2))?
        .reshape((n, c, 2 * h, 2 * w))
}

/// `spec` as [`fmn_ops::conv`] takes it (a negative ONNX value is an error).
fn conv_spec(spec: ConvSpec) -> candle_core::Result<Conv2dSpec> {
    let get = |v: i64| {
        usize::try_from(v).map_err(|_| {
            candle_core::Error::Msg(format!("convolution {spec:?}: negative value {v}"))
        })
    };
    Ok(Conv2dSpec {
        stride: get(spec.stride)?,
        padding: get(spec.padding)?,
        dilation: get(spec.dilation)?,
    })
}

/// The 2-D convolution ONNX `Conv` computes with `spec` (symmetric padding, no bias), by
/// [`fmn_ops::conv`], the workspace's one convolution (fast to differentiate on the CPU).
pub fn conv2d(x: &Tensor, w: &Tensor, spec: ConvSpec) -> candle_core::Result<Tensor> {
    conv2d_with(x, w, None, conv_spec(spec)?)
}

impl ToyNet {
    /// He-uniform weights, zero biases, drawn from `seed`.
    pub fn new(widths: Widths, seed: u64) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        for l in layers(widths) {
            let fan_in = (l.c_in * l.k * l.k) as f32;
            let bound = (6.0 / fan_in).sqrt();
            let n = l.c_out * l.c_in * l.k * l.k;
            let w: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            let w = Tensor::from_vec(w, (l.c_out, l.c_in, l.k, l.k), &Device::Cpu)?;
            let b = Tensor::zeros(l.c_out, DType::F32, &Device::Cpu)?;
            params.push((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
        }
        Ok(Self { widths, params })
    }

    pub fn widths(&self) -> Widths {
        self.widths
    }

    pub fn parameter_count(&self) -> usize {
        self.params
            .iter()
            .map(|(w, b)| w.elem_count() + b.elem_count())
            .sum()
    }

    fn vars(&self) -> Vec<Var> {
        self.params
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    fn conv(&self, i: usize, x: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
        let (layers, params) = (layers(self.widths), &self.params);
        let (Some(l), Some((w, b))) = (layers.get(i), params.get(i)) else {
            candle_core::bail!("toy segmenter: no layer {i}");
        };
        let y = conv2d_with(x, w.as_tensor(), Some(b.as_tensor()), conv_spec(l.spec)?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// Logits `[N, 1, 64, 64]` for normalised input `[N, 3, 64, 64]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let e1 = self.conv(1, &self.conv(0, x, true)?, true)?;
        let e2 = self.conv(3, &self.conv(2, &e1, true)?, true)?;
        let e3 = self.conv(5, &self.conv(4, &e2, true)?, true)?;
        let d2 = self.conv(6, &Tensor::cat(&[&up2(&e3)?, &e2], 1)?, true)?;
        let d1 = self.conv(7, &Tensor::cat(&[&up2(&d2)?, &e1], 1)?, true)?;
        self.conv(8, &d1, false)
    }

    /// The network as an ONNX model: input `image` `[N, 3, 64, 64]`, output `mask`
    /// `[N, 1, 64, 64]` (sigmoid probabilities).
    pub fn to_onnx(&self, doc: &str, metadata: &[(&str, &str)]) -> Result<ModelProto> {
        let mut g = GraphBuilder::new("toy_segmenter");
        let n = SIZE as i64;
        let x = g.input(INPUT, &[Dim::from("N"), 3.into(), n.into(), n.into()]);
        let ls = layers(self.widths);
        let conv = |g: &mut GraphBuilder, i: usize, x: &str, relu: bool| -> Result<String> {
            let (Some(l), Some((w, b))) = (ls.get(i), self.params.get(i)) else {
                return Err(SegmenterError::Train(format!("no layer {i}")));
            };
            let wv: Vec<f32> = w.as_tensor().flatten_all()?.to_vec1()?;
            let bv: Vec<f32> = b.as_tensor().to_vec1()?;
            let dims = [l.c_out as i64, l.c_in as i64, l.k as i64, l.k as i64];
            let y = g.conv(l.name, x, (&dims, &wv), Some(&bv), l.spec);
            Ok(if relu { g.relu(&y) } else { y })
        };
        let h = conv(&mut g, 0, &x, true)?;
        let e1 = conv(&mut g, 1, &h, true)?;
        let h = conv(&mut g, 2, &e1, true)?;
        let e2 = conv(&mut g, 3, &h, true)?;
        let h = conv(&mut g, 4, &e2, true)?;
        let e3 = conv(&mut g, 5, &h, true)?;
        let u = g.upsample_nearest(&e3, 2);
        let c = g.concat(&[&u, &e2], 1);
        let d2 = conv(&mut g, 6, &c, true)?;
        let u = g.upsample_nearest(&d2, 2);
        let c = g.concat(&[&u, &e1], 1);
        let d1 = conv(&mut g, 7, &c, true)?;
        let logits = conv(&mut g, 8, &d1, false)?;
        g.node_into("Sigmoid", &[&logits], OUTPUT, &[]);
        g.output(OUTPUT, &[Dim::from("N"), 1.into(), n.into(), n.into()]);
        Ok(g.finish(doc, metadata))
    }

    /// The network read back from an exported model (by its initializer names).
    pub fn from_onnx(model: &ModelProto, widths: Widths) -> Result<Self> {
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| SegmenterError::Train("model has no graph".into()))?;
        let find = |name: String, shape: Vec<usize>| -> Result<Var> {
            let t = graph
                .initializer
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| SegmenterError::Train(format!("model has no initializer {name}")))?;
            let v: Vec<f32> = t
                .raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok(Var::from_tensor(&Tensor::from_vec(
                v,
                shape,
                &Device::Cpu,
            )?)?)
        };
        let mut params = Vec::new();
        for l in layers(widths) {
            params.push((
                find(
                    format!("{}.weight", l.name),
                    vec![l.c_out, l.c_in, l.k, l.k],
                )?,
                find(format!("{}.bias", l.name), vec![l.c_out])?,
            ));
        }
        Ok(Self { widths, params })
    }
}

/// Degradations that make renders look like a small diffusion model's output, so the
/// segmenter keeps working on generated images: resampling through a lower resolution, blur,
/// colour jitter, per-pixel and blotchy noise. Each applies with probability ½.
pub fn degrade(img: &RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
    use image::imageops::{self, FilterType};
    let (w, h) = img.dimensions();
    let mut out = img.clone();
    if rng.random_bool(0.3) {
        let side = rng.random_range(20..48);
        let small = imageops::resize(&out, side, side, FilterType::Triangle);
        out = imageops::resize(&small, w, h, FilterType::CatmullRom);
    }
    if rng.random_bool(0.4) {
        out = imageops::blur(&out, rng.random_range(0.3..1.3));
    }
    let mut px: Vec<f32> = out.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    if rng.random_bool(0.7) {
        let gain: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.88..1.12));
        let offset: [f32; 3] = std::array::from_fn(|_| rng.random_range(-0.08..0.08));
        let contrast = rng.random_range(0.8..1.15);
        for p in px.chunks_mut(3) {
            for k in 0..3 {
                p[k] = (p[k] - 0.5) * contrast + 0.5;
                p[k] = p[k] * gain[k] + offset[k];
            }
        }
    }
    if rng.random_bool(0.5) {
        let sigma = rng.random_range(0.005..0.06);
        // As rand_distr's Normal::new(0, sigma) draws (without its error for a bad sigma).
        for v in px.iter_mut() {
            *v += sigma * rng.sample::<f32, _>(StandardNormal);
        }
    }
    if rng.random_bool(0.3) {
        // Smooth blotches: a coarse random grid, upsampled.
        let g = 6usize;
        let amp = rng.random_range(0.01..0.07);
        let grid: Vec<f32> = (0..g * g * 3)
            .map(|_| rng.random_range(-amp..amp))
            .collect();
        for y in 0..h as usize {
            for x in 0..w as usize {
                let gx = x * (g - 1) / w as usize;
                let gy = y * (g - 1) / h as usize;
                for k in 0..3 {
                    px[(y * w as usize + x) * 3 + k] += grid[(gy * g + gx) * 3 + k];
                }
            }
        }
    }
    let raw = px
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    // `px` holds w·h·3 values (one per byte of `img`), so from_raw cannot fail; the input is
    // returned unchanged if it somehow did.
    RgbImage::from_raw(w, h, raw).unwrap_or_else(|| img.clone())
}

/// Flips and quarter turns of an image and its mask together.
fn flip_turn(img: &RgbImage, mask: &GrayImage, rng: &mut ChaCha8Rng) -> (RgbImage, GrayImage) {
    use image::imageops;
    let (mut i, mut m) = (img.clone(), mask.clone());
    if rng.random_bool(0.5) {
        i = imageops::flip_horizontal(&i);
        m = imageops::flip_horizontal(&m);
    }
    match rng.random_range(0..4) {
        1 => (imageops::rotate90(&i), imageops::rotate90(&m)),
        2 => (imageops::rotate180(&i), imageops::rotate180(&m)),
        3 => (imageops::rotate270(&i), imageops::rotate270(&m)),
        _ => (i, m),
    }
}

/// `(pixel / 255 − 0.5) / 0.5`, CHW, as the toy preset feeds the model.
pub fn normalise(img: &RgbImage) -> Vec<f32> {
    let plane = SIZE * SIZE;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

fn batch_tensors(items: &[(RgbImage, GrayImage)]) -> candle_core::Result<(Tensor, Tensor)> {
    let n = items.len();
    let mut x = Vec::with_capacity(n * 3 * SIZE * SIZE);
    let mut y = Vec::with_capacity(n * SIZE * SIZE);
    for (img, mask) in items {
        x.extend(normalise(img));
        y.extend(mask.as_raw().iter().map(|&v| (v >= 128) as u8 as f32));
    }
    Ok((
        Tensor::from_vec(x, (n, 3, SIZE, SIZE), &Device::Cpu)?,
        Tensor::from_vec(y, (n, 1, SIZE, SIZE), &Device::Cpu)?,
    ))
}

/// Binary cross-entropy on logits plus soft Dice loss.
fn loss(logits: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let bce = (logits.relu()? - (logits * target)?
        + ((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?
    .mean_all()?;
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * target)?.sum_all()?;
    let total = (p.sum_all()? + target.sum_all()?)?;
    let dice = (1.0 - ((inter * 2.0)? + 1.0)?.div(&(total + 1.0)?)?)?;
    bce + dice
}

/// Training settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub widths: Widths,
    /// Fraction of each batch that is degraded.
    pub degrade: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            steps: 400,
            batch: 16,
            lr: 4e-3,
            widths: Widths::default(),
            degrade: 0.6,
        }
    }
}

/// Trains a [`ToyNet`] on `samples`; `progress(step, loss)` is called after every step.
/// Deterministic for a given seed, sample list and thread count. Each step allocates and frees
/// the same large tensors: a program training should keep freed memory for reuse
/// ([`fmn_core::allocator::tune_for_tensors`], as `fmn-toy` does), else glibc's page faults
/// take a third of the run.
pub fn train(
    samples: &[Sample],
    cfg: &TrainConfig,
    mut progress: impl FnMut(usize, f32),
) -> Result<ToyNet> {
    if samples.is_empty() {
        return Err(SegmenterError::Train("no training samples".into()));
    }
    let net = ToyNet::new(cfg.widths, cfg.seed)?;
    let mut opt = AdamW::new(
        net.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5e6_7e57);
    for step in 0..cfg.steps {
        // Cosine decay to 5% of the rate, after a short warm-up.
        let warm = 50.min(cfg.steps / 10).max(1);
        let t = step as f64 / cfg.steps.max(1) as f64;
        let lr = if step < warm {
            cfg.lr * (step + 1) as f64 / warm as f64
        } else {
            cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
        };
        opt.set_learning_rate(lr);
        let items: Vec<(RgbImage, GrayImage)> = (0..cfg.batch)
            .map(|_| {
                let s = &samples[rng.random_range(0..samples.len())];
                let (img, mask) = flip_turn(&s.image, &s.mask, &mut rng);
                let img = if rng.random_bool(cfg.degrade) {
                    degrade(&img, &mut rng)
                } else {
                    img
                };
                (img, mask)
            })
            .collect();
        let (x, y) = batch_tensors(&items)?;
        let l = loss(&net.forward(&x)?, &y)?;
        opt.backward_step(&l)?;
        progress(step + 1, l.to_scalar::<f32>()?);
    }
    Ok(net)
}

/// Mean per-image IoU of `net` (run with candle) on `samples`.
pub fn evaluate(net: &ToyNet, samples: &[Sample]) -> Result<f64> {
    let mut total = 0.0;
    for chunk in samples.chunks(64) {
        let items: Vec<(RgbImage, GrayImage)> = chunk
            .iter()
            .map(|s| (s.image.clone(), s.mask.clone()))
            .collect();
        let (x, _) = batch_tensors(&items)?;
        let logits: Vec<f32> = net.forward(&x)?.flatten_all()?.to_vec1()?;
        for (s, l) in chunk.iter().zip(logits.chunks(SIZE * SIZE)) {
            let pred = GrayImage::from_raw(
                SIZE as u32,
                SIZE as u32,
                l.iter().map(|&v| if v >= 0.0 { 255 } else { 0 }).collect(),
            )
            .ok_or_else(|| SegmenterError::Train("logits of the wrong size".into()))?;
            total += mask_iou(&pred, &s.mask);
        }
    }
    Ok(total / samples.len() as f64)
}

/// Writes `net` as `dir/model.onnx` (atomically) and returns its path.
pub fn export(net: &ToyNet, dir: &Path, cfg: &TrainConfig, note: &str) -> Result<PathBuf> {
    let cfg_json = serde_json::to_string(cfg).unwrap_or_default();
    let model = net.to_onnx(
        "fmn toy segmenter: finds the figure in toy-world renders. Input (pixel/255-0.5)/0.5, RGB, 64x64; output sigmoid probability.",
        &[("fmn.train_config", &cfg_json), ("fmn.note", note)],
    )?;
    let path = dir.join("model.onnx");
    let bytes = onnx::encode(&model);
    fmn_core::write_atomic(&path, |f| std::io::Write::write_all(f, &bytes)).map_err(|e| {
        SegmenterError::Io {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    Ok(path)
}
