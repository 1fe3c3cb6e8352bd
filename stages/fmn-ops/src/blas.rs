//! Matrix products through an optimised BLAS loaded at run time, else the `gemm` crate.
//!
//! On the 2-core AMD EPYC (Zen 4) development machine the `gemm` crate reaches 42 GFLOPS on one
//! core for a 2048³ f32 product where OpenBLAS and MKL reach 95–100, and the products are most
//! of an SD-size training step (BENCHMARKS.md#faster-than-pytorch-side-by-side).
//! So when a BLAS library can be loaded, every product of fmn's own ops goes through its
//! `cblas_?gemm`, one thread per call, the rows split over rayon's threads where the op is not
//! already parallel: one thread pool, no oversubscription. Without one they go to the `gemm`
//! crate (as candle's matmul does), also read in place from the operands' storage.
//!
//! Which library: `FMN_BLAS` names it (a path or a name `dlopen` finds; OpenBLAS's
//! `libopenblas.so.0`, or `libscipy_openblas.so` from the scipy-openblas32 wheel that
//! `scripts/install-openblas.sh` fetches); `FMN_BLAS=none` uses the `gemm` crate; unset, the
//! system's `libopenblas.so.0` is tried, then the `gemm` crate. A library named by `FMN_BLAS`
//! that cannot be loaded is an error, not a silent fallback.
use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor};
use num_traits::Float;
use rayon::prelude::*;
use std::ffi::c_int;
use std::sync::OnceLock;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type GemmFn<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    T,
    *const T,
    c_int,
    *const T,
    c_int,
    T,
    *mut T,
    c_int,
);

/// A loaded BLAS: its `cblas_sgemm` / `cblas_dgemm`.
pub struct Blas {
    name: String,
    sgemm: GemmFn<f32>,
    dgemm: GemmFn<f64>,
    // Keeps the functions above mapped.
    _lib: libloading::Library,
}

impl Blas {
    /// What was loaded (the name or path it was opened by).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn open(name: &str) -> std::result::Result<Self, String> {
        // SAFETY: loading runs the library's initialisers; OpenBLAS's only start its thread
        // pool, which is set to one thread below before any product runs.
        let lib = unsafe { libloading::Library::new(name) }.map_err(|e| {
            // libloading's message is "dlopen failed"; dlerror's text is its source.
            match std::error::Error::source(&e) {
                Some(why) => format!("{e}: {why}"),
                None => e.to_string(),
            }
        })?;
        // OpenBLAS exports `cblas_sgemm`; the scipy-openblas wheels prefix every symbol.
        for prefix in ["", "scipy_"] {
            let symbol = |s: &str| format!("{prefix}{s}\0").into_bytes();
            // SAFETY: the symbols are the CBLAS functions, whose C signatures are `GemmFn`'s
            // and `void (int)`.
            unsafe {
                let (Ok(sgemm), Ok(dgemm)) = (
                    lib.get::<GemmFn<f32>>(symbol("cblas_sgemm").as_slice()),
                    lib.get::<GemmFn<f64>>(symbol("cblas_dgemm").as_slice()),
                ) else {
                    continue;
                };
                let (sgemm, dgemm) = (*sgemm, *dgemm);
                let set_threads = symbol("openblas_set_num_threads");
                if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(set_threads.as_slice()) {
                    set(1);
                }
                return Ok(Self {
                    name: name.to_string(),
                    sgemm,
                    dgemm,
                    _lib: lib,
                });
            }
        }
        Err("it has no cblas_sgemm / cblas_dgemm".into())
    }
}

static BLAS: OnceLock<std::result::Result<Option<Blas>, String>> = OnceLock::new();

/// The BLAS products go through, `None` for the `gemm` crate; an error when `FMN_BLAS` names
/// a library that cannot be loaded.
pub fn backend() -> Result<Option<&'static Blas>> {
    let loaded = BLAS.get_or_init(|| match std::env::var("FMN_BLAS") {
        Ok(name) if name == "none" || name.is_empty() => Ok(None),
        Ok(name) => Blas::open(&name).map(Some).map_err(|e| {
            format!(
                "FMN_BLAS={name}: cannot load it as a BLAS library ({e}); set FMN_BLAS to \
                 OpenBLAS's library (scripts/install-openblas.sh prints one) or to `none`"
            )
        }),
        Err(_) => {
            let system = Blas::open("libopenblas.so.0").ok();
            if system.is_none() {
                // At SD size the gemm crate reaches about half OpenBLAS's speed per core
                // (BENCHMARKS.md#faster-than-pytorch-side-by-side).
                tracing::warn!(
                    "no OpenBLAS found (FMN_BLAS unset, no libopenblas.so.0): matrix products \
                     run on the gemm crate, about half as fast; set FMN_BLAS to OpenBLAS's \
                     library (scripts/install-openblas.sh prints one), or FMN_BLAS=none to \
                     choose the gemm crate"
                );
            }
            Ok(system)
        }
    });
    match loaded {
        Ok(blas) => Ok(blas.as_ref()),
        Err(e) => Err(candle_core::Error::Msg(e.clone())),
    }
}

/// A matrix view: `rows × cols` with element `(r, c)` at `data[r·rs + c·cs]`
/// (`cs = rows`-strided views express transposes without copying).
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `r0..r1`.
    fn rows(self, r0: usize, r1: usize) -> Self {
        Self {
            data: if r1 > r0 {
                &self.data[r0 * self.rs..]
            } else {
                &[]
            },
            rows: r1 - r0,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }

    /// CBLAS's `(transpose, leading dimension)` for this view, if its layout has one: unit
    /// steps along one axis and, along the other, at least a whole line (a broadcast view's
    /// zero stride has none; the `gemm` crate takes it).
    fn cblas(&self) -> Option<(c_int, c_int)> {
        let ld = |stride: usize, line: usize, lines: usize| {
            let ld = if lines <= 1 { line.max(1) } else { stride };
            (ld >= line.max(1))
                .then(|| c_int::try_from(ld).ok())
                .flatten()
        };
        if self.cols <= 1 || self.cs == 1 {
            if let Some(ld) = ld(self.rs, self.cols, self.rows) {
                return Some((NO_TRANS, ld));
            }
        }
        if self.rows <= 1 || self.rs == 1 {
            if let Some(ld) = ld(self.cs, self.rows, self.cols) {
                return Some((TRANS, ld));
            }
        }
        None
    }
}

/// The element types with a BLAS product.
pub trait Element: Float + Send + Sync + 'static {
    fn cblas_gemm(blas: &Blas) -> GemmFn<Self>;
}

impl Element for f32 {
    fn cblas_gemm(blas: &Blas) -> GemmFn<f32> {
        blas.sgemm
    }
}

impl Element for f64 {
    fn cblas_gemm(blas: &Blas) -> GemmFn<f64> {
        blas.dgemm
    }
}

/// `dst (row-major a.rows × b.cols) = factor·a·b`, or `+= factor·a·b` with `accumulate`, on the
/// calling thread, through `blas` where given and the layouts allow, else the `gemm` crate.
pub fn gemm<T: Element>(
    blas: Option<&Blas>,
    dst: &mut [T],
    a: MatRef<T>,
    b: MatRef<T>,
    accumulate: bool,
    factor: T,
) {
    gemm_parallel(blas, dst, a, b, accumulate, factor, 1)
}

/// [`gemm`] over `threads` threads: the BLAS calls split the rows of `dst` over rayon's pool,
/// the `gemm` crate parallelises itself.
pub fn gemm_parallel<T: Element>(
    blas: Option<&Blas>,
    dst: &mut [T],
    a: MatRef<T>,
    b: MatRef<T>,
    accumulate: bool,
    factor: T,
    threads: usize,
) {
    assert!(a.cols == b.rows && a.fits() && b.fits() && dst.len() == a.rows * b.cols);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    let sizes_fit = [m, n, k].iter().all(|&x| c_int::try_from(x).is_ok());
    let blas_layout = blas.zip(a.cblas()).zip(b.cblas()).filter(|_| sizes_fit);
    let Some(((blas, (ta, lda)), (tb, ldb))) = blas_layout else {
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: every view's extent was checked against its slice above, and `dst` is exactly
        // `a.rows × b.cols` and does not alias the inputs (it is a `&mut`).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                a.data.as_ptr(),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr(),
                b.cs as isize,
                b.rs as isize,
                T::one(),
                factor,
                false,
                false,
                false,
                parallelism,
            );
        }
        return;
    };
    let f = T::cblas_gemm(blas);
    let beta = if accumulate { T::one() } else { T::zero() };
    let call = |dst: &mut [T], a: MatRef<T>| {
        if a.rows == 0 {
            return;
        }
        // SAFETY: the extents were checked above (a row block of `a` keeps its strides), the
        // sizes fit a C int, and `dst` is this block's `a.rows × n` rows, exclusively ours.
        unsafe {
            f(
                ROW_MAJOR,
                ta,
                tb,
                a.rows as c_int,
                n as c_int,
                k as c_int,
                factor,
                a.data.as_ptr(),
                lda,
                b.data.as_ptr(),
                ldb,
                beta,
                dst.as_mut_ptr(),
                n as c_int,
            )
        }
    };
    // Blocks of whole rows, at least 64 of them (each call packs `b` once).
    let per_thread = m.div_ceil(threads.max(1)).max(64);
    if threads <= 1 || per_thread >= m {
        call(dst, a);
    } else {
        dst.par_chunks_mut(per_thread * n)
            .enumerate()
            .for_each(|(i, d)| {
                let r0 = i * per_thread;
                call(d, a.rows(r0, r0 + d.len() / n))
            });
    }
}

/// The CPU values of a 2-D f32/f64 tensor as a matrix view, if its layout is one.
fn view<'a, T>(data: &'a [T], layout: &Layout) -> Option<MatRef<'a, T>> {
    let [rows, cols] = layout.shape().dims() else {
        return None;
    };
    let [rs, cs] = layout.stride() else {
        return None;
    };
    let m = MatRef {
        data: data.get(layout.start_offset()..)?,
        rows: *rows,
        cols: *cols,
        rs: *rs,
        cs: *cs,
    };
    m.fits().then_some(m)
}

/// `a @ b` for 2-D CPU values of one dtype (f32 or f64) whose layouts are matrix views (any
/// strides, transposes included), without copying them: through the BLAS when one is loaded,
/// else the `gemm` crate. `None` for anything else (the caller falls back to candle).
pub fn product_cpu(
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
) -> Result<Option<(CpuStorage, Shape)>> {
    let blas = backend()?;
    let threads = candle_core::utils::get_num_threads();
    fn run<T: Element>(
        blas: Option<&Blas>,
        a: Option<MatRef<T>>,
        b: Option<MatRef<T>>,
        threads: usize,
    ) -> Option<(Vec<T>, Shape)> {
        let (a, b) = (a?, b?);
        if a.cols != b.rows {
            return None;
        }
        let mut out = vec![T::zero(); a.rows * b.cols];
        gemm_parallel(blas, &mut out, a, b, false, T::one(), threads);
        Some((out, Shape::from((a.rows, b.cols))))
    }
    Ok(match (a, b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => {
            run(blas, view(x, la), view(y, lb), threads).map(|(v, s)| (CpuStorage::F32(v), s))
        }
        (CpuStorage::F64(x), CpuStorage::F64(y)) => {
            run(blas, view(x, la), view(y, lb), threads).map(|(v, s)| (CpuStorage::F64(v), s))
        }
        _ => None,
    })
}

/// `a @ b` for 2-D tensors, without a gradient (the caller's op defines the backward): by
/// [`product_cpu`] where it applies, else candle's `matmul`.
pub fn product(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = {
        let (sa, la) = a.storage_and_layout();
        let (sb, lb) = b.storage_and_layout();
        match (&*sa, &*sb) {
            (Storage::Cpu(x), Storage::Cpu(y)) => product_cpu(x, la, y, lb)?,
            _ => None,
        }
    };
    match out {
        Some((CpuStorage::F32(v), shape)) => Tensor::from_vec(v, shape, a.device()),
        Some((CpuStorage::F64(v), shape)) => Tensor::from_vec(v, shape, a.device()),
        _ => a.matmul(b),
    }
}
