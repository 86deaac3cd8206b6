//! The fully connected network: `Linear → [BatchNorm] → act` per hidden layer, then a linear
//! output layer.
//!
//! Parameter names follow PyTorch: `layers.{i}.weight` (`[out, in]` after the snapshot
//! adapter transposes burn's `[in, out]`), `layers.{i}.bias`, and for batch norm
//! `norms.{i}.weight/bias/running_mean/running_var`. Initialisation is PyTorch's `nn.Linear`
//! default: weights and biases uniform in ±1/√fan_in (burn's `LinearConfig` default).

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;

use super::activate;
use crate::config::{Activation, ModelConfig};

/// Multi-layer perceptron.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers then the output layer.
    layers: Vec<Linear>,
    /// One batch norm per hidden layer, or none.
    norms: Vec<BatchNorm>,
    #[module(skip)]
    activation: Activation,
}

impl Mlp {
    /// Builds an MLP `d_in → hidden… → classes` on `device`, drawing weights from the device's
    /// (process-global) seeded generator.
    pub fn new(cfg: &ModelConfig, d_in: usize, classes: usize, device: &Device) -> Self {
        let mut widths = vec![d_in];
        widths.extend(&cfg.hidden);
        widths.push(classes);
        let layers = widths
            .windows(2)
            .map(|w| LinearConfig::new(w[0], w[1]).init(device))
            .collect();
        let norms = if cfg.batch_norm() {
            cfg.hidden
                .iter()
                .map(|&w| BatchNormConfig::new(w).init(device))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            layers,
            norms,
            activation: cfg.activation,
        }
    }

    /// Logits.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]`
    /// - output: `[batch, classes]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_from_first(self.first_layer(x))
    }

    /// The pre-activation of the first layer, `x·W₀ + b₀`: `[batch, d_in] → [batch, width₀]`.
    ///
    /// It is linear in the weights, which is what makes the line cheap: along θ(α) it equals
    /// (1−α)·first_layer_i(x) + α·first_layer_c(x).
    pub fn first_layer(&self, x: Tensor<2>) -> Tensor<2> {
        self.layers[0].forward(x)
    }

    /// Everything after [`first_layer`](Self::first_layer): `[batch, width₀] → [batch, classes]`.
    pub fn forward_from_first(&self, pre: Tensor<2>) -> Tensor<2> {
        let mut h = pre;
        for (i, layer) in self.layers.iter().enumerate().skip(1) {
            h = self.hidden_activation(i - 1, h);
            h = layer.forward(h);
        }
        h
    }

    fn hidden_activation(&self, i: usize, pre: Tensor<2>) -> Tensor<2> {
        let normed = match self.norms.get(i) {
            Some(bn) => super::norm::batch_norm(bn, pre),
            None => pre,
        };
        activate(self.activation, normed)
    }

    /// The output layer.
    pub(crate) fn output_mut(&mut self) -> &mut Linear {
        // `new` always builds the output layer.
        let last = self.layers.len() - 1;
        &mut self.layers[last]
    }

    /// The batch-norm layers.
    pub fn norms(&self) -> impl Iterator<Item = &BatchNorm> {
        self.norms.iter()
    }

    /// The batch-norm layers, mutably.
    pub fn norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        self.norms.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelConfig, Norm};

    #[test]
    fn forward_shapes_and_split_forward_agree() {
        let device = Device::flex();
        device.seed(7);
        for bn in [false, true] {
            let cfg = ModelConfig {
                hidden: vec![16, 8],
                norm: Some(if bn { Norm::Batch } else { Norm::None }),
                ..ModelConfig::default()
            };
            let m = Mlp::new(&cfg, 12, 3, &device);
            let x = Tensor::<2>::random(
                [5, 12],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let y = m.forward(x.clone());
            assert_eq!(y.dims(), [5, 3]);
            let y2 = m.forward_from_first(m.first_layer(x));
            let (a, b): (Vec<f32>, Vec<f32>) = (
                y.into_data().try_into_vec::<f32>().unwrap(),
                y2.into_data().try_into_vec::<f32>().unwrap(),
            );
            assert_eq!(a, b);
            assert_eq!(m.norms().count(), if bn { 2 } else { 0 });
        }
    }

    #[test]
    fn no_hidden_layer_is_a_linear_model() {
        let device = Device::flex();
        let cfg = ModelConfig {
            hidden: vec![],
            ..ModelConfig::default()
        };
        let m = Mlp::new(&cfg, 4, 2, &device);
        assert_eq!(
            m.forward(Tensor::<2>::zeros([3, 4], &device)).dims(),
            [3, 2]
        );
    }
}
