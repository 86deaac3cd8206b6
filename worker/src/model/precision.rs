//! Mixed precision: forward passes in bfloat16 over f32 master weights.
//!
//! The network keeps its weights in f32 (the optimizer, the snapshots, the interpolation and
//! the parameter-space geometry all see f32). For a bf16 forward pass, [`Net::autocast`]
//! makes a copy whose convolution and linear weights are cast to bf16; the cast is an
//! operation in the autodiff graph, so gradients of the copy's weights arrive, cast back to
//! f32, at the master weights. Batch norm stays in f32 (its input is cast up and its output
//! back down, as PyTorch's autocast does), because batch statistics of bf16 activations lose
//! too many bits, and its running statistics are shared with the master network. Inputs are
//! cast to bf16 and logits back to f32, so losses are reduced in f32.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;

use super::Net;
use crate::config::Precision;

impl Precision {
    /// The float type of forward-pass arithmetic.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
        }
    }
}

/// Whether `device` can compute in `precision`.
pub fn supported(device: &Device, precision: Precision) -> bool {
    device.supports_dtype(precision.dtype())
}

/// Casts trainable weights outside batch-norm layers to one float type.
struct CastWeights {
    dtype: FloatDType,
    /// Nesting depth inside a `BatchNorm` (whose parameters and buffers stay f32).
    in_norm: usize,
}

impl ModuleMapper for CastWeights {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if container_type == "Struct:BatchNorm" || self.in_norm > 0 {
            self.in_norm += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.in_norm = self.in_norm.saturating_sub(1);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.in_norm > 0 {
            return param;
        }
        let dtype = self.dtype;
        param.map(|t| t.cast(dtype))
    }
}

/// A network ready for forward passes in one precision.
// Made once per batch or α point and never moved after: boxing the copy buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Autocast<'a> {
    /// f32: the network itself.
    Same(&'a Net),
    /// A copy with low-precision weights.
    Cast(Net, FloatDType),
}

impl Autocast<'_> {
    /// f32 logits of `x` (an f32 batch), computed in this precision.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Self::Same(net) => net.forward(x),
            Self::Cast(net, dtype) => net.forward(x.cast(*dtype)).cast(FloatDType::F32),
        }
    }

    /// The network that runs the forward passes.
    pub fn net(&self) -> &Net {
        match self {
            Self::Same(net) => net,
            Self::Cast(net, _) => net,
        }
    }

    /// The float type of the arithmetic.
    pub fn dtype(&self) -> FloatDType {
        match self {
            Self::Same(_) => FloatDType::F32,
            Self::Cast(_, dtype) => *dtype,
        }
    }
}

impl Net {
    /// This network prepared for forward passes in `precision` (see the module doc).
    pub fn autocast(&self, precision: Precision) -> Autocast<'_> {
        match precision {
            Precision::F32 => Autocast::Same(self),
            p => Autocast::Cast(self.cast_weights(p.dtype()), p.dtype()),
        }
    }

    /// A copy whose weights outside batch norm are cast to `dtype`, for forward passes on
    /// inputs of that type. Its batch-norm layers (and running statistics) are this
    /// network's.
    pub fn cast_weights(&self, dtype: FloatDType) -> Net {
        self.clone().map(&mut CastWeights { dtype, in_norm: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, ModelConfig, Norm};
    use crate::engine::eval::{cross_entropy, labels_tensor};
    use crate::snapshot::{HostSnapshot, TensorKind};
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::tensor::Distribution;

    fn net(arch: Arch, device: &Device) -> Net {
        device.seed(3);
        let cfg = ModelConfig {
            arch,
            hidden: vec![16],
            channels: vec![4, 8],
            norm: Some(Norm::Batch),
            ..ModelConfig::default()
        };
        Net::new(&cfg, [3, 8, 8], 5, device)
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn bf16_logits_are_f32_and_close_to_the_f32_ones() {
        let device = Device::flex();
        assert!(supported(&device, Precision::Bf16));
        for arch in [Arch::Mlp, Arch::Cnn, Arch::Resnet20] {
            let n = net(arch, &device);
            let x = Tensor::<4>::random([4, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
            let full = n.autocast(Precision::F32).forward(x.clone());
            let low = n.autocast(Precision::Bf16);
            assert_eq!(low.dtype(), FloatDType::BF16);
            let half = low.forward(x);
            assert_eq!(FloatDType::from(half.dtype()), FloatDType::F32);
            let (a, b) = (values(full), values(half));
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            // bf16 keeps 8 bits of mantissa: a few per cent, not exactness, and not garbage.
            assert!(diff > 0.0, "{arch:?}: bf16 gave bit-identical logits");
            assert!(
                diff < 0.1 * scale,
                "{arch:?}: max |Δ| {diff} vs scale {scale}"
            );
        }
    }

    #[test]
    fn a_bf16_step_trains_the_f32_master_weights() {
        let device = Device::flex().autodiff();
        let n = net(Arch::Cnn, &device);
        let before = HostSnapshot::capture(&n.valid(), 0).unwrap();
        let x = Tensor::<4>::random([4, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device);
        let y = labels_tensor(&[0, 1, 2, 3], &device);
        let loss = cross_entropy(n.autocast(Precision::Bf16).forward(x), y).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &n);
        // Every trainable tensor of the master network got a gradient through the casts.
        let trainable = before
            .tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Parameter)
            .count();
        assert_eq!(grads.len(), trainable);
        let mut optim = SgdConfig::new().init();
        let n = optim.step(0.5, n, grads);
        // Capture refuses anything but f32, so this also checks the master stayed f32.
        let after = HostSnapshot::capture(&n.valid(), 1).unwrap();
        for (a, b) in before.tensors.iter().zip(&after.tensors) {
            if a.kind == TensorKind::Parameter {
                assert_ne!(a.data, b.data, "{} did not move", a.name);
            }
        }
        // Batch norm ran in training mode in f32 and updated the master's running mean.
        let mean = |s: &HostSnapshot| {
            s.tensors
                .iter()
                .find(|t| t.name.ends_with("running_mean"))
                .unwrap()
                .data
                .clone()
        };
        assert_ne!(mean(&before), mean(&after));
        assert!(mean(&after).iter().all(|v| v.is_finite()));
    }
}
