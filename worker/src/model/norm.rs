//! Batch norm as the models call it: always in f32, whatever the activations' float type.

use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::FloatDType;

/// Batch norm of `x` (`[batch, channels, …]`) in f32, returning `x`'s float type.
///
/// Under mixed precision the activations arrive in bf16; batch statistics of bf16 values
/// lose too many bits, so they are cast up, normalised with the f32 γ/β and running
/// statistics, and cast back (PyTorch's autocast keeps batch norm in f32 for the same reason).
pub(crate) fn batch_norm<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let dtype: FloatDType = x.dtype().into();
    if dtype == FloatDType::F32 {
        bn.forward(x)
    } else {
        bn.forward(x.cast(FloatDType::F32)).cast(dtype)
    }
}
