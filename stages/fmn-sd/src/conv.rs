//! 2-D convolution as im2col + one matrix product, with a backward pass of the same shape.
//!
//! candle's CPU conv2d computes the kernel gradient as a convolution whose kernel is the whole
//! output map, which is dozens of times slower than the forward pass at image sizes (see
//! BENCHMARKS.md). Here the patches are unfolded by a custom op (`Im2Col`, backward: `Col2Im`)
//! and the rest is a matmul, whose backward candle does with the same fast GEMM.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
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
    h_out: usize,
    w_out: usize,
}

impl Geometry {
    fn patch_len(&self) -> usize {
        self.channels * self.kh * self.kw
    }

    /// Calls `f(k, src)` for each patch entry `k` of output pixel `(oy, ox)` that lies inside
    /// the (unpadded) input, with `src` the offset within one image `[C, H, W]`.
    #[inline]
    fn for_each_tap(&self, oy: usize, ox: usize, mut f: impl FnMut(usize, usize)) {
        for c in 0..self.channels {
            for ki in 0..self.kh {
                let iy = (oy * self.stride + ki) as isize - self.padding as isize;
                if iy < 0 || iy >= self.h as isize {
                    continue;
                }
                for kj in 0..self.kw {
                    let ix = (ox * self.stride + kj) as isize - self.padding as isize;
                    if ix < 0 || ix >= self.w as isize {
                        continue;
                    }
                    let k = (c * self.kh + ki) * self.kw + kj;
                    f(k, (c * self.h + iy as usize) * self.w + ix as usize);
                }
            }
        }
    }
}

/// `[B, C, H, W] -> [B, H_out·W_out, C·kh·kw]`
struct Im2Col(Geometry);
/// `[B, H_out·W_out, C·kh·kw] -> [B, C, H, W]` (overlapping taps summed): the adjoint of Im2Col.
struct Col2Im(Geometry);

fn im2col<T: WithDType + Send + Sync>(src: &[T], batch: usize, g: &Geometry) -> Vec<T> {
    let k = g.patch_len();
    let l = g.h_out * g.w_out;
    let image = g.channels * g.h * g.w;
    let mut out = vec![T::zero(); batch * l * k];
    out.par_chunks_mut(k).enumerate().for_each(|(row, dst)| {
        let (b, pix) = (row / l, row % l);
        let img = &src[b * image..(b + 1) * image];
        g.for_each_tap(pix / g.w_out, pix % g.w_out, |k, s| dst[k] = img[s]);
    });
    out
}

fn col2im<T: WithDType + Send + Sync + std::ops::AddAssign>(
    src: &[T],
    batch: usize,
    g: &Geometry,
) -> Vec<T> {
    let k = g.patch_len();
    let l = g.h_out * g.w_out;
    let image = g.channels * g.h * g.w;
    let mut out = vec![T::zero(); batch * image];
    out.par_chunks_mut(image).enumerate().for_each(|(b, dst)| {
        let cols = &src[b * l * k..(b + 1) * l * k];
        for pix in 0..l {
            let row = &cols[pix * k..(pix + 1) * k];
            g.for_each_tap(pix / g.w_out, pix % g.w_out, |k, s| dst[s] += row[k]);
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
        let shape = Shape::from((batch, g.h_out * g.w_out, g.patch_len()));
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
        let batch = layout.shape().dims()[0];
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

/// `x: [B, C, H, W]`, `weight: [O, C, kh, kw]` -> `[B, O, H_out, W_out]` (no bias), as
/// `torch.nn.functional.conv2d` with equal stride and padding on both axes. On non-CPU devices
/// this is candle's own convolution.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    let (b, c, h, w) = x.dims4()?;
    let (o, c_w, kh, kw) = weight.dims4()?;
    if c != c_w {
        candle_core::bail!("conv2d: input has {c} channels, the kernel expects {c_w}");
    }
    if h + 2 * padding < kh || w + 2 * padding < kw {
        candle_core::bail!("conv2d: {h}x{w} input is smaller than the {kh}x{kw} kernel");
    }
    let g = Geometry {
        channels: c,
        h,
        w,
        kh,
        kw,
        stride,
        padding,
        h_out: (h + 2 * padding - kh) / stride + 1,
        w_out: (w + 2 * padding - kw) / stride + 1,
    };
    let cols = if kh == 1 && kw == 1 && stride == 1 && padding == 0 {
        x.flatten_from(2)?.transpose(1, 2)?
    } else {
        x.contiguous()?.apply_op1(Im2Col(g))?
    };
    let l = g.h_out * g.w_out;
    let out = cols
        .reshape((b * l, g.patch_len()))?
        .matmul(&weight.reshape((o, g.patch_len()))?.t()?)?;
    out.reshape((b, g.h_out, g.w_out, o))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}
