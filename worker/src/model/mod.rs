//! Models, as burn modules whose snapshot names and layouts match a PyTorch module of the same
//! architecture (see `docs/results.md` for the PyTorch classes).
//!
//! **Architecture invariant:** models know nothing about data files, storage or the science.

pub mod cnn;
pub mod mlp;
pub mod norm;
pub mod precision;
pub mod resnet;

use burn::module::Module;
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation;

pub use cnn::Cnn;
pub use mlp::Mlp;
pub use precision::Autocast;
pub use resnet::ResNet;

use crate::config::{Activation, Arch, ModelConfig};

/// Any architecture of the shard config. An enum module: its variant names never reach
/// snapshot names (snapshots skip enum variants), so `Net::ResNet` saves torchvision's keys.
// A network is built once per run and moved rarely; boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
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

    /// The network with its output layer's weight and bias multiplied by `c`: its logits are
    /// `c` times the original's (the Safran–Shamir path).
    pub fn scale_output(mut self, c: f64) -> Self {
        let out = match &mut self {
            Self::Mlp(m) => m.output_mut(),
            Self::Cnn(m) => m.output_mut(),
            Self::ResNet(m) => m.output_mut(),
        };
        out.weight = out.weight.clone().map(|w| w.mul_scalar(c));
        if let Some(b) = out.bias.take() {
            out.bias = Some(b.map(|b| b.mul_scalar(c)));
        }
        self
    }

    /// The MLP, whose first layer the line evaluation caches.
    pub fn as_mlp(&self) -> Option<&Mlp> {
        match self {
            Self::Mlp(m) => Some(m),
            _ => None,
        }
    }

    /// Every batch-norm layer, in the same order as [`norms_mut`](Self::norms_mut).
    pub fn norms(&self) -> Vec<&BatchNorm> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Norm;
    use crate::snapshot::{HostSnapshot, TensorKind};

    fn cfg(arch: Arch) -> ModelConfig {
        ModelConfig {
            arch,
            ..ModelConfig::default()
        }
    }

    fn names(net: &Net) -> Vec<(String, Vec<usize>, TensorKind)> {
        HostSnapshot::capture(net, 0)
            .unwrap()
            .tensors
            .into_iter()
            .map(|t| (t.name, t.shape, t.kind))
            .collect()
    }

    #[test]
    fn resnet50_has_torchvisions_parameter_count() {
        let device = Device::flex();
        device.seed(1);
        let net = Net::new(&cfg(Arch::Resnet50), [3, 224, 224], 1000, &device);
        let snap = HostSnapshot::capture(&net, 0).unwrap();
        // torchvision.models.resnet50(): 25,557,032 trainable parameters; running statistics
        // are buffers (53 batch-norm layers, 26,560 channels, mean and variance each).
        assert_eq!(snap.parameter_count(), 25_557_032);
        let buffers: usize = snap
            .tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Buffer)
            .map(|t| t.data.len())
            .sum();
        assert_eq!(buffers, 2 * 26_560);
    }

    #[test]
    fn resnet_names_are_torchvisions() {
        let device = Device::flex();
        let net = Net::new(&cfg(Arch::Resnet18), [3, 64, 64], 10, &device);
        let n = names(&net);
        let has = |name: &str, shape: &[usize]| {
            assert!(
                n.iter().any(|(k, s, _)| k == name && s == shape),
                "{name} {shape:?} missing"
            );
        };
        has("conv1.weight", &[64, 3, 7, 7]);
        has("bn1.weight", &[64]);
        has("bn1.running_var", &[64]);
        has("layer1.0.conv1.weight", &[64, 64, 3, 3]);
        has("layer2.0.downsample.0.weight", &[128, 64, 1, 1]);
        has("layer2.0.downsample.1.running_mean", &[128]);
        has("layer4.1.bn2.bias", &[512]);
        has("fc.weight", &[10, 512]);
        has("fc.bias", &[10]);
        assert!(
            n.iter()
                .all(|(k, _, _)| !k.contains("ResNet") && !k.contains("gamma"))
        );
        // torchvision resnet18 state_dict: 62 parameters + 40 buffers (num_batches_tracked
        // is added when the file is written).
        assert_eq!(n.len(), 62 + 40);

        let cifar = Net::new(&cfg(Arch::Resnet20), [3, 32, 32], 10, &device);
        let n = names(&cifar);
        assert!(
            n.iter()
                .any(|(k, s, _)| k == "conv1.weight" && s == &[16, 3, 3, 3])
        );
        assert!(n.iter().any(|(k, _, _)| k == "layer3.2.conv2.weight"));
        assert!(n.iter().all(|(k, _, _)| !k.starts_with("layer4")));
        // He et al.'s 0.27 M, plus the projection shortcuts: the PyTorch module of
        // docs/results.md counts 272,474 as well.
        let p = HostSnapshot::capture(&cifar, 0).unwrap().parameter_count();
        assert_eq!(p, 272_474);

        let plain = Net::new(
            &ModelConfig {
                norm: Some(Norm::None),
                ..cfg(Arch::Resnet20)
            },
            [3, 32, 32],
            10,
            &device,
        );
        assert!(!plain.has_batch_norm());
        assert!(
            names(&plain)
                .iter()
                .any(|(k, _, _)| k == "layer1.0.conv1.bias")
        );
    }

    #[test]
    fn cnn_names_and_forward_shapes() {
        let device = Device::flex();
        let c = ModelConfig {
            channels: vec![4, 8],
            norm: Some(Norm::Batch),
            ..cfg(Arch::Cnn)
        };
        let net = Net::new(&c, [1, 28, 28], 10, &device);
        let n = names(&net);
        for k in [
            "convs.0.weight",
            "convs.1.bias",
            "norms.1.running_var",
            "fc.weight",
        ] {
            assert!(n.iter().any(|(name, _, _)| name == k), "{k}");
        }
        let y = net.forward(Tensor::zeros([3, 1, 28, 28], &device));
        assert_eq!(y.dims(), [3, 10]);
    }

    #[test]
    fn resnet50_forward_at_224() {
        let device = Device::flex();
        device.seed(3);
        let net = Net::new(&cfg(Arch::Resnet50), [3, 224, 224], 1000, &device);
        let x = Tensor::<4>::random(
            [2, 3, 224, 224],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let y = net.valid().forward(x);
        assert_eq!(y.dims(), [2, 1000]);
        let v: Vec<f32> = y.into_data().try_into_vec().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
