//! Raw kernel rates for `linesweep bench --kernels`: the numbers to compare backends with.

use std::time::Instant;

use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;

use super::eval::{cross_entropy, labels_tensor};
use crate::config::ModelConfig;
use crate::model::Mlp;

/// Measured rates.
#[derive(Debug, Clone, Copy)]
pub struct KernelRates {
    /// Size of the square matmul.
    pub matmul_n: usize,
    /// GFLOP/s of an n³ f32 matmul.
    pub matmul_gflops: f64,
    /// Batch of the MLP step.
    pub mlp_batch: usize,
    /// GFLOP/s of a forward+backward+SGD step of the default MLP (matmul FLOPs only).
    pub mlp_gflops: f64,
}

/// Median of `reps` timings of `f`, after one warm-up call.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Measures the matmul and MLP-step rates on `device`.
pub fn measure(device: &Device) -> KernelRates {
    let n = 2048;
    let a = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], burn::tensor::Distribution::Default, device);
    let secs = time(5, || {
        let c = a.clone().matmul(b.clone());
        let _ = c.sum().into_scalar::<f32>();
    });
    let matmul_gflops = 2.0 * (n as f64).powi(3) / secs / 1e9;

    let ad = device.clone().autodiff();
    let batch = 128;
    let mut model = Mlp::new(&ModelConfig::default(), 784, 10, &ad);
    let mut optim = SgdConfig::new().init();
    let x = Tensor::<2>::random([batch, 784], burn::tensor::Distribution::Default, &ad);
    let labels: Vec<u16> = (0..batch).map(|i| (i % 10) as u16).collect();
    let y = labels_tensor(&labels, &ad);
    let secs = time(20, || {
        let loss = cross_entropy(model.forward(x.clone()), y.clone()).mean();
        let _ = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(0.01, model.clone(), grads);
    });
    // Forward 2·b·Σ(in·out); backward twice that, minus the unneeded input gradient of layer 0.
    let macs: f64 = [(784.0, 1024.0), (1024.0, 1024.0), (1024.0, 10.0)]
        .iter()
        .map(|(i, o)| i * o)
        .sum();
    let flops = 2.0 * batch as f64 * (3.0 * macs - 784.0 * 1024.0);
    KernelRates {
        matmul_n: n,
        matmul_gflops,
        mlp_batch: batch,
        mlp_gflops: flops / secs / 1e9,
    }
}
