//! Convolution as im2col + one matrix product, channels-last, with a custom backward
//! (col2im). candle's own CPU conv2d backward is far too slow for training on 2 cores.
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

#[derive(Debug, Clone, Copy)]
struct Geometry {
    k: usize,
    stride: usize,
    pad: usize,
    b: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl Geometry {
    fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// Calls `f(col_offset, x_offset)` for every in-bounds (output pixel, tap): `C` values
    /// of the column row at `col_offset` correspond to those of the input at `x_offset`.
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let (ho, wo) = self.out_hw();
        let (k, c) = (self.k, self.c);
        let row_len = k * k * c;
        for b in 0..self.b {
            for oy in 0..ho {
                for ox in 0..wo {
                    let row = ((b * ho + oy) * wo + ox) * row_len;
                    for ky in 0..k {
                        let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                            if ix < 0 || ix >= self.w as isize {
                                continue;
                            }
                            let xo = ((b * self.h + iy as usize) * self.w + ix as usize) * c;
                            f(row + (ky * k + kx) * c, xo);
                        }
                    }
                }
            }
        }
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("im2col: input must be contiguous"),
    }
}

/// (B, H, W, C) → (B·Ho·Wo, k·k·C), zero-padded.
struct Im2Col {
    k: usize,
    stride: usize,
    pad: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout)?;
        let (b, h, w, c) = layout.shape().dims4()?;
        let g = Geometry {
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            b,
            h,
            w,
            c,
        };
        let (ho, wo) = g.out_hw();
        let row_len = self.k * self.k * c;
        let mut out = vec![0f32; b * ho * wo * row_len];
        g.for_each(|co, xo| out[co..co + c].copy_from_slice(&x[xo..xo + c]));
        Ok((CpuStorage::F32(out), Shape::from((b * ho * wo, row_len))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (b, h, w, c) = arg.dims4()?;
        let op = Col2Im(Geometry {
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            b,
            h,
            w,
            c,
        });
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The adjoint of [`Im2Col`]: sums column entries back into (B, H, W, C).
struct Col2Im(Geometry);

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(storage, layout)?;
        let g = self.0;
        let mut out = vec![0f32; g.b * g.h * g.w * g.c];
        let c = g.c;
        g.for_each(|co, xo| {
            for (o, v) in out[xo..xo + c].iter_mut().zip(&cols[co..co + c]) {
                *o += v;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.h, g.w, g.c))))
    }
}

/// 2-D convolution of channels-last `x` (B, H, W, Cin) with `weight` (Cout, Cin, k, k) and
/// `bias` (Cout); returns (B, Ho, Wo, Cout).
pub(crate) fn conv2d_nhwc(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let (b, h, w, _) = x.dims4()?;
    let (cout, cin, k, _) = weight.dims4()?;
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let cols = x.contiguous()?.apply_op1(Im2Col { k, stride, pad })?;
    // (Cout, Cin, ky, kx) → (ky, kx, Cin, Cout) to match the column order.
    let wm = weight.permute((2, 3, 1, 0))?.reshape((k * k * cin, cout))?;
    cols.matmul(&wm)?
        .broadcast_add(bias)?
        .reshape((b, ho, wo, cout))
}
