//! The small convolutional network: per entry of `channels`, a 3×3 convolution (padding 1),
//! optional batch norm, the nonlinearity and a 2×2 max-pool; then global average pooling and a
//! linear classifier.
//!
//! PyTorch names: `convs.{i}.weight/bias`, `norms.{i}.weight/bias/running_mean/running_var`,
//! `fc.weight/bias` (`docs/results.md` has the matching PyTorch module). Initialisation is
//! PyTorch's default for `nn.Conv2d` and `nn.Linear` (burn's defaults).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::activate;
use crate::config::Activation;

/// Convolutional network.
#[derive(Module, Debug)]
pub struct Cnn {
    convs: Vec<Conv2d>,
    /// One batch norm per convolution, or none.
    norms: Vec<BatchNorm>,
    fc: Linear,
    pool: MaxPool2d,
    #[module(skip)]
    activation: Activation,
}

impl Cnn {
    /// Builds the network for `in_channels`-channel images and `classes` outputs.
    pub fn new(
        channels: &[usize],
        batch_norm: bool,
        activation: Activation,
        in_channels: usize,
        classes: usize,
        device: &Device,
    ) -> Self {
        let mut widths = vec![in_channels];
        widths.extend(channels);
        let convs = widths
            .windows(2)
            .map(|w| {
                Conv2dConfig::new([w[0], w[1]], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        let norms = if batch_norm {
            channels
                .iter()
                .map(|&c| BatchNormConfig::new(c).init(device))
                .collect()
        } else {
            Vec::new()
        };
        let last = *widths.last().unwrap_or(&in_channels);
        Self {
            convs,
            norms,
            fc: LinearConfig::new(last, classes).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            activation,
        }
    }

    /// The output layer.
    pub(crate) fn output_mut(&mut self) -> &mut Linear {
        &mut self.fc
    }

    /// Logits: `[batch, c, h, w] → [batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = x;
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(h);
            if let Some(bn) = self.norms.get(i) {
                h = super::norm::batch_norm(bn, h);
            }
            h = activate(self.activation, h);
            // Images smaller than the pooling window keep their size.
            let [_, _, height, width] = h.dims();
            if height >= 2 && width >= 2 {
                h = self.pool.forward(h);
            }
        }
        let [b, c, _, _] = h.dims();
        // Global average pooling.
        let pooled = h.mean_dim(3).mean_dim(2).reshape([b, c]);
        self.fc.forward(pooled)
    }

    /// The batch-norm layers, for the line's batch-norm modes.
    pub fn norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        self.norms.iter_mut()
    }

    /// The batch-norm layers.
    pub fn norms(&self) -> impl Iterator<Item = &BatchNorm> {
        self.norms.iter()
    }
}
