//! Models, as burn modules whose snapshot names and layouts match a PyTorch module of the same
//! architecture (see `docs/results.md` for the PyTorch classes).
//!
//! **Architecture invariant:** models know nothing about data files, storage or the science.

pub mod cnn;
pub mod mlp;
pub mod resnet;

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation;

pub use cnn::Cnn;
pub use mlp::Mlp;
pub use resnet::ResNet;

use crate::config::{Activation, Arch, ModelConfig};

/// Any architecture of the shard config. An enum module: its variant names never reach
/// snapshot names (snapshots skip enum variants), so `Net::ResNet` saves torchvision's keys.
#[derive(Module, Debug)]
pub enum Net {
    /// Fully connected.
    Mlp(Mlp),
    /// Small convolutional network.
    Cnn(Cnn),
    /// CIFAR or ImageNet residual network.
    ResNet(ResNet),
}

/// The nonlinearity `a` applied to `x`.
pub(crate) fn activate<const D: usize>(a: Activation, x: Tensor<D>) -> Tensor<D> {
    match a {
        Activation::Relu => activation::relu(x),
        Activation::Tanh => activation::tanh(x),
        Activation::Sigmoid => activation::sigmoid(x),
    }
}

impl Net {
    /// Builds the network of `cfg` for inputs of shape `[channels, height, width]`, drawing
    /// weights from the device's (process-global) seeded generator.
    pub fn new(cfg: &ModelConfig, input: [usize; 3], classes: usize, device: &Device) -> Self {
        let bn = cfg.batch_norm();
        let [c, h, w] = input;
        match cfg.arch {
            Arch::Mlp => Self::Mlp(Mlp::new(cfg, c * h * w, classes, device)),
            Arch::Cnn => Self::Cnn(Cnn::new(
                &cfg.channels,
                bn,
                cfg.activation,
                c,
                classes,
                device,
            )),
            arch => {
                let depth = match arch {
                    Arch::Resnet18 => resnet::Depth::R18,
                    Arch::Resnet50 => resnet::Depth::R50,
                    Arch::Resnet20 => resnet::Depth::Cifar(3),
                    Arch::Resnet32 => resnet::Depth::Cifar(5),
                    Arch::Resnet44 => resnet::Depth::Cifar(7),
                    _ => resnet::Depth::Cifar(9),
                };
                Self::ResNet(ResNet::new(depth, bn, c, classes, device))
            }
        }
    }

    /// Logits.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`
    /// - output: `[batch, classes]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Mlp(m) => {
                let [b, c, h, w] = x.dims();
                m.forward(x.reshape([b, c * h * w]))
            }
            Self::Cnn(m) => m.forward(x),
            Self::ResNet(m) => m.forward(x),
        }
    }

    /// The MLP, whose first layer the line evaluation caches.
    pub fn as_mlp(&self) -> Option<&Mlp> {
        match self {
            Self::Mlp(m) => Some(m),
            _ => None,
        }
    }

    fn norms(&self) -> Vec<&BatchNorm> {
        match self {
            Self::Mlp(m) => m.norms().collect(),
            Self::Cnn(m) => m.norms().collect(),
            Self::ResNet(m) => m.norms().collect(),
        }
    }

    /// Every batch-norm layer, mutably (their `momentum` is a plain field, out of a mapper's
    /// reach).
    pub fn norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        match self {
            Self::Mlp(m) => m.norms_mut().collect(),
            Self::Cnn(m) => m.norms_mut().collect(),
            Self::ResNet(m) => m.norms_mut().collect(),
        }
    }

    /// True when the network has batch-norm layers (and so running statistics).
    pub fn has_batch_norm(&self) -> bool {
        !self.norms().is_empty()
    }

    /// The smallest running variance of any batch-norm layer (`None` without batch norm).
    ///
    /// Interpolating running variances outside α ∈ [0, 1] can make them negative; such a
    /// network has no meaningful loss and the line records the point as invalid.
    pub fn min_running_var(&self) -> Option<f32> {
        self.norms()
            .iter()
            .map(|bn| bn.running_var.value().min().into_scalar::<f32>())
            .reduce(f32::min)
    }
}
