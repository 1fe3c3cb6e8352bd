//! 2-D convolution as im2col + one matrix product, with a backward pass of the same shape.
//!
//! candle's CPU conv2d computes the kernel gradient as a convolution whose kernel is the whole
//! output map, which is dozens of times slower than the forward pass at image sizes (see
//! BENCHMARKS.md). Here the patches are unfolded by a custom op (`Im2Col`, backward: `Col2Im`)
//! and the rest is a matmul, whose backward candle does with the same fast GEMM.
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    channels: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    h_out: usize,
    w_out: usize,
}

impl Geometry {
    fn patch_len(&self) -> usize {
        self.channels * self.kh * self.kw
    }

    /// For kernel tap `(ki, kj)` and output row `oy`: the input row it reads, if inside.
    #[inline]
    fn input_row(&self, oy: usize, ki: usize) -> Option<usize> {
        let iy = (oy * self.stride + ki * self.dilation).checked_sub(self.padding)?;
        (iy < self.h).then_some(iy)
    }

    /// For kernel column `kj`: the output columns `lo..hi` whose input column lies inside the
    /// image, and the input column of output column 0 (may be negative: only used from `lo`).
    #[inline]
    fn column_span(&self, kj: usize) -> (usize, usize, isize) {
        let first = (kj * self.dilation) as isize - self.padding as isize;
        let s = self.stride as isize;
        let lo = if first >= 0 {
            0
        } else {
            ((-first + s - 1) / s) as usize
        };
        let last_inside = self.w as isize - 1 - first;
        let hi = if last_inside < 0 {
            0
        } else {
            ((last_inside / s) as usize + 1).min(self.w_out)
        };
        (lo, hi.max(lo), first)
    }
}

/// `[B, C, H, W] -> [C·kh·kw, B·H_out·W_out]`: one row per kernel tap, ready for
/// `weight[O, C·kh·kw] × cols`.
struct Im2Col(Geometry);
/// `[C·kh·kw, B·H_out·W_out] -> [B, C, H, W]` (overlapping taps summed): the adjoint of Im2Col.
struct Col2Im(Geometry);

fn im2col<T: WithDType + Send + Sync>(src: &[T], batch: usize, g: &Geometry) -> Vec<T> {
    let l = g.h_out * g.w_out;
    let image = g.channels * g.h * g.w;
    let mut out = vec![T::zero(); g.patch_len() * batch * l];
    out.par_chunks_mut(batch * l)
        .enumerate()
        .for_each(|(k, row)| {
            let (c, ki, kj) = (k / (g.kh * g.kw), (k / g.kw) % g.kh, k % g.kw);
            let (lo, hi, first) = g.column_span(kj);
            for b in 0..batch {
                let plane = &src[b * image + c * g.h * g.w..][..g.h * g.w];
                for oy in 0..g.h_out {
                    let Some(iy) = g.input_row(oy, ki) else {
                        continue;
                    };
                    let line = &plane[iy * g.w..(iy + 1) * g.w];
                    let dst = &mut row[(b * g.h_out + oy) * g.w_out..][..g.w_out];
                    if g.stride == 1 {
                        let x0 = (lo as isize + first) as usize;
                        dst[lo..hi].copy_from_slice(&line[x0..x0 + (hi - lo)]);
                    } else {
                        for ox in lo..hi {
                            dst[ox] = line[(ox as isize * g.stride as isize + first) as usize];
                        }
                    }
                }
            }
        });
    out
}

fn col2im<T: WithDType + Send + Sync + std::ops::AddAssign>(
    src: &[T],
    batch: usize,
    g: &Geometry,
) -> Vec<T> {
    let l = g.h_out * g.w_out;
    let taps = g.kh * g.kw;
    let mut out = vec![T::zero(); batch * g.channels * g.h * g.w];
    out.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(bc, plane)| {
            let (b, c) = (bc / g.channels, bc % g.channels);
            for tap in 0..taps {
                let (ki, kj) = (tap / g.kw, tap % g.kw);
                let (lo, hi, first) = g.column_span(kj);
                let row = &src[(c * taps + tap) * batch * l + b * l..][..l];
                for oy in 0..g.h_out {
                    let Some(iy) = g.input_row(oy, ki) else {
                        continue;
                    };
                    let line = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let from = &row[oy * g.w_out..(oy + 1) * g.w_out];
                    for ox in lo..hi {
                        line[(ox as isize * g.stride as isize + first) as usize] += from[ox];
                    }
                }
            }
        });
    out
}

fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("im2col/col2im need a contiguous input"),
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "fmn-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let batch = layout.shape().dims()[0];
        let shape = Shape::from((g.patch_len(), batch * g.h_out * g.w_out));
        let out = match storage {
            CpuStorage::F32(d) => CpuStorage::F32(im2col(contiguous_slice(d, layout)?, batch, g)),
            CpuStorage::F64(d) => CpuStorage::F64(im2col(contiguous_slice(d, layout)?, batch, g)),
            _ => candle_core::bail!("im2col: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "fmn-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let batch = layout.shape().dims()[1] / (g.h_out * g.w_out);
        let shape = Shape::from((batch, g.channels, g.h, g.w));
        let out = match storage {
            CpuStorage::F32(d) => CpuStorage::F32(col2im(contiguous_slice(d, layout)?, batch, g)),
            CpuStorage::F64(d) => CpuStorage::F64(col2im(contiguous_slice(d, layout)?, batch, g)),
            _ => candle_core::bail!("col2im: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// Stride, zero padding and dilation of a convolution, the same on both axes (as
/// `torch.nn.functional.conv2d`'s `stride`, `padding`, `dilation` and ONNX `Conv`'s
/// `strides`, symmetric `pads`, `dilations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub stride: usize,
    pub padding: usize,
    /// Spacing of the kernel taps (1: adjacent pixels).
    pub dilation: usize,
}

impl Default for Conv2dSpec {
    /// Stride 1, no padding, dilation 1.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }
}

impl Conv2dSpec {
    /// `stride` and `padding`, dilation 1.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding,
            dilation: 1,
        }
    }

    /// The same with the taps `dilation` pixels apart.
    pub fn dilated(self, dilation: usize) -> Self {
        Self { dilation, ..self }
    }
}

/// `x: [B, C, H, W]`, `weight: [O, C, kh, kw]` -> `[B, O, H_out, W_out]` (no bias), as
/// `torch.nn.functional.conv2d` with equal stride and padding on both axes. On non-CPU devices
/// this is candle's own convolution; on the CPU, f16 / bf16 inputs are computed in f32 (candle's
/// CPU matmul has no bf16) and the result cast back.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_with(x, weight, None, Conv2dSpec::new(stride, padding))
}

/// [`conv2d`] plus a per-output-channel `bias: [O]`. On the CPU the bias is added to the
/// `[O, B·L]` product, so its gradient is a sum over contiguous rows (candle's sum over the
/// batch and both spatial axes of `[B, O, H, W]` is several times slower).
pub fn conv2d_biased(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_with(x, weight, bias, Conv2dSpec::new(stride, padding))
}

/// The convolution of [`conv2d_biased`] with any [`Conv2dSpec`] (dilation included).
pub fn conv2d_with(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    spec: Conv2dSpec,
) -> Result<Tensor> {
    let Conv2dSpec {
        stride,
        padding,
        dilation,
    } = spec;
    if stride == 0 || dilation == 0 {
        candle_core::bail!("conv2d: stride and dilation must be at least 1, not {spec:?}");
    }
    if !x.device().is_cpu() {
        let y = x.conv2d(weight, padding, stride, dilation, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        };
    }
    if matches!(x.dtype(), DType::F16 | DType::BF16) {
        let wide = conv2d_with(
            &x.to_dtype(DType::F32)?,
            &weight.to_dtype(DType::F32)?,
            bias.map(|b| b.to_dtype(DType::F32)).transpose()?.as_ref(),
            spec,
        )?;
        return wide.to_dtype(x.dtype());
    }
    let (b, c, h, w) = x.dims4()?;
    let (o, c_w, kh, kw) = weight.dims4()?;
    if c != c_w {
        candle_core::bail!("conv2d: input has {c} channels, the kernel expects {c_w}");
    }
    if kh == 0 || kw == 0 {
        candle_core::bail!("conv2d: the kernel is empty ({kh}x{kw})");
    }
    // The kernel's extent with its taps `dilation` apart.
    let (reach_h, reach_w) = (dilation * (kh - 1) + 1, dilation * (kw - 1) + 1);
    if h + 2 * padding < reach_h || w + 2 * padding < reach_w {
        candle_core::bail!(
            "conv2d: {h}x{w} input is smaller than the {kh}x{kw} kernel (dilation {dilation})"
        );
    }
    let g = Geometry {
        channels: c,
        h,
        w,
        kh,
        kw,
        stride,
        padding,
        dilation,
        h_out: (h + 2 * padding - reach_h) / stride + 1,
        w_out: (w + 2 * padding - reach_w) / stride + 1,
    };
    let l = g.h_out * g.w_out;
    let cols = if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
        x.reshape((b, c, l))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((c, b * l))?
    } else {
        x.contiguous()?.apply_op1(Im2Col(g))?
    };
    // [O, K] × [K, B·L] -> [O, B·L]: one GEMM for the whole batch, in both passes.
    let out = crate::frozen_matmul::matmul(&weight.reshape((o, g.patch_len()))?, &cols)?;
    let out = match bias {
        Some(b) => out.broadcast_add(&b.reshape((o, 1))?)?,
        None => out,
    };
    out.reshape((o, b, g.h_out, g.w_out))?
        .transpose(0, 1)?
        .contiguous()
}
