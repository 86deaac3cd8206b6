//! Loss and accuracy of a model over an evaluation set, in evaluation mode.

use burn::prelude::*;
use burn::tensor::activation;

use crate::data::Split;

/// Per-example cross-entropy of logits against integer targets.
///
/// # Shapes
/// - `logits`: `[batch, classes]`
/// - `targets`: `[batch]`
/// - output: `[batch]`
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let log_probs = activation::log_softmax(logits, 1);
    log_probs
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
        .neg()
}

/// Number of rows whose arg-max logit is the target, as a one-element float tensor.
pub fn correct(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    logits.argmax(1).reshape([n]).equal(targets).float().sum()
}

/// A split uploaded to a device once, cut into evaluation batches.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// `(features [batch, c, h, w], targets [batch])` per batch.
    pub batches: Vec<(Tensor<4>, Tensor<1, Int>)>,
    /// Number of examples.
    pub len: usize,
}

impl EvalSet {
    /// Uploads `split` to `device` in batches of `batch_size`.
    pub fn new(split: &Split, batch_size: usize, device: &Device) -> Self {
        let x = features_tensor(split, device);
        let y = labels_tensor(&split.labels, device);
        let n = split.len();
        let batches = (0..n)
            .step_by(batch_size.max(1))
            .map(|start| {
                let len = batch_size.min(n - start);
                (
                    x.clone().narrow(0, start, len),
                    y.clone().narrow(0, start, len),
                )
            })
            .collect();
        Self { batches, len: n }
    }
}

/// `[len, c, h, w]` features of a split on `device`.
pub fn features_tensor(split: &Split, device: &Device) -> Tensor<4> {
    let [c, h, w] = split.shape;
    Tensor::from_data(
        TensorData::new(split.features.clone(), [split.len(), c, h, w]),
        device,
    )
}

/// `[len]` integer labels on `device`.
pub fn labels_tensor(labels: &[u16], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::from_data(TensorData::new(v, [labels.len()]), device)
}

/// Mean loss and accuracy over a set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossAcc {
    /// Mean cross-entropy per example.
    pub loss: f64,
    /// Fraction of examples classified correctly, in [0, 1].
    pub accuracy: f64,
}

/// Accumulates loss sums and correct counts on the device and reads them back once, because
/// every read is a device synchronisation.
#[derive(Default)]
pub struct Accumulator {
    parts: Vec<Tensor<1>>,
    examples: usize,
}

impl Accumulator {
    /// Adds one batch of logits.
    pub fn add(&mut self, logits: Tensor<2>, targets: Tensor<1, Int>) {
        self.examples += targets.dims()[0];
        self.parts
            .push(cross_entropy(logits.clone(), targets.clone()).sum());
        self.parts.push(correct(logits, targets));
    }

    /// Mean loss and accuracy of everything added.
    pub fn finish(self) -> LossAcc {
        if self.parts.is_empty() {
            return LossAcc {
                loss: f64::NAN,
                accuracy: f64::NAN,
            };
        }
        let values: Vec<f32> = match Tensor::cat(self.parts, 0)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
        {
            Ok(v) => v,
            // Never a silent 0.0: an unreadable result is no value, and the point is invalid.
            Err(e) => {
                tracing::error!(error = ?e, "reading evaluation results from the device failed");
                return LossAcc {
                    loss: f64::NAN,
                    accuracy: f64::NAN,
                };
            }
        };
        let (mut loss, mut right) = (0.0f64, 0.0f64);
        for pair in values.chunks_exact(2) {
            loss += f64::from(pair[0]);
            right += f64::from(pair[1]);
        }
        let n = self.examples as f64;
        LossAcc {
            loss: loss / n,
            accuracy: right / n,
        }
    }
}

/// Loss and accuracy of `forward` over `set`.
pub fn evaluate(set: &EvalSet, forward: impl Fn(Tensor<4>) -> Tensor<2>) -> LossAcc {
    let mut acc = Accumulator::default();
    for (x, y) in &set.batches {
        acc.add(forward(x.clone()), y.clone());
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_k() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([4, 10], &device);
        let targets = labels_tensor(&[0, 3, 9, 5], &device);
        let ce: Vec<f32> = cross_entropy(logits, targets)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for v in ce {
            assert!((f64::from(v) - 10f64.ln()).abs() < 1e-6);
        }
    }

    #[test]
    fn accumulator_gives_mean_loss_and_accuracy() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![5.0f32, 0.0, 0.0, 5.0, 5.0, 0.0], [3, 2]),
            &device,
        );
        let mut acc = Accumulator::default();
        acc.add(logits, labels_tensor(&[0, 1, 1], &device));
        let r = acc.finish();
        assert!((r.accuracy - 2.0 / 3.0).abs() < 1e-12);
        let small = (1.0 + (-5f64).exp()).ln();
        let big = 5.0 + small;
        assert!(
            (r.loss - (2.0 * small + big) / 3.0).abs() < 1e-5,
            "{}",
            r.loss
        );
    }
}

#[cfg(test)]
mod select_tests {
    use super::*;

    #[test]
    fn select_gathers_the_requested_rows_on_autodiff_devices() {
        let device = Device::flex().autodiff();
        let split = Split {
            features: (0..40).map(|v| v as f32).collect(),
            labels: (0..10).collect(),
            shape: [1, 2, 2],
        };
        let x = features_tensor(&split, &device);
        let y = labels_tensor(&split.labels, &device);
        let idx = Tensor::<1, Int>::from_data(TensorData::new(vec![7i64, 2, 9], [3]), &device);
        let xs: Vec<f32> = x
            .select(0, idx.clone())
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(
            xs,
            vec![
                28.0, 29.0, 30.0, 31.0, 8.0, 9.0, 10.0, 11.0, 36.0, 37.0, 38.0, 39.0
            ]
        );
        let ys: Vec<i64> = y
            .select(0, idx)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        assert_eq!(ys, vec![7, 2, 9]);
    }

    #[test]
    fn select_is_right_on_training_sized_tensors() {
        let device = Device::flex().autodiff();
        let (n, dim) = (8000usize, 784usize);
        let split = Split {
            features: (0..n * dim).map(|v| (v % 9973) as f32).collect(),
            labels: (0..n).map(|i| (i % 10) as u16).collect(),
            shape: [1, 28, 28],
        };
        let x = features_tensor(&split, &device);
        let y = labels_tensor(&split.labels, &device);
        let picks: Vec<i64> = (0..128).map(|k| ((k * 7919 + 13) % n) as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(picks.clone(), [128]), &device);
        let xs: Vec<f32> = x
            .select(0, idx.clone())
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let ys: Vec<i64> = y
            .select(0, idx)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap();
        for (r, &i) in picks.iter().enumerate() {
            let i = i as usize;
            assert_eq!(
                &xs[r * dim..(r + 1) * dim],
                &split.features[i * dim..(i + 1) * dim],
                "row {r}"
            );
            assert_eq!(ys[r], i64::from(split.labels[i]));
        }
    }
}
