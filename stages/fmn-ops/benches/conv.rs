//! conv2d forward+backward: candle's kernel vs fmn's im2col op, at toy-VAE and SD sizes.
//! `cargo bench -p fmn-ops --bench conv`
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

fn time(f: impl Fn()) -> f64 {
    f();
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (b, c, hw) in [
        (16usize, 16usize, 64usize),
        (16, 64, 16),
        (1, 320, 64),
        (1, 640, 32),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, hw, hw), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c, c, 3, 3), &dev)?)?;
        let candle = time(|| {
            let y = x.as_tensor().conv2d(w.as_tensor(), 1, 1, 1, 1).unwrap();
            y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        });
        let ours = time(|| {
            let y = fmn_ops::conv::conv2d(x.as_tensor(), w.as_tensor(), 1, 1).unwrap();
            y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        });
        let fwd_candle = time(|| {
            x.as_tensor()
                .detach()
                .conv2d(&w.as_tensor().detach(), 1, 1, 1, 1)
                .unwrap();
        });
        let fwd_ours = time(|| {
            fmn_ops::conv::conv2d(&x.as_tensor().detach(), &w.as_tensor().detach(), 1, 1).unwrap();
        });
        println!(
            "conv3x3 [{b},{c},{hw},{hw}]: forward candle {fwd_candle:.3}s fmn {fwd_ours:.3}s | forward+backward candle {candle:.3}s fmn {ours:.3}s"
        );
    }
    Ok(())
}
