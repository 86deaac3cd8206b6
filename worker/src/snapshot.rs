//! Weight snapshots: host copies of a model's tensors under PyTorch names, and their
//! safetensors encoding.
//!
//! **Architecture invariant:** this is the only module that knows the snapshot file format.
//! A snapshot loads into the PyTorch module of the same architecture with `load_state_dict`:
//! names and layouts come from burn-store's `BurnToPyTorchAdapter` (linear weights as
//! `[out, in]`, batch-norm γ/β as `weight`/`bias`), and every batch-norm layer also gets the
//! `num_batches_tracked` counter PyTorch keeps.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use burn::tensor::DType;
use safetensors::tensor::{Dtype, TensorView};

/// A snapshot could not be captured, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading a tensor back from the device failed.
    #[error("cannot read tensor `{name}` from the device: {message}")]
    Device { name: String, message: String },
    /// A tensor of a type snapshots do not hold.
    #[error("tensor `{name}` has dtype {dtype}; snapshots hold f32 tensors")]
    Dtype { name: String, dtype: String },
    /// The safetensors container is malformed.
    #[error("{file}: not a valid snapshot: {message}")]
    Format { file: String, message: String },
}

/// Whether a tensor is a trainable coordinate of parameter space or a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Weights, biases, batch-norm γ/β: the coordinates the geometry is computed in.
    Parameter,
    /// Batch-norm running statistics: state, never part of α/β or norms.
    Buffer,
}

/// One tensor of a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// PyTorch state-dict key, e.g. `layers.0.weight`.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
    /// Parameter or buffer.
    pub kind: TensorKind,
}

/// The weights of a model at one optimizer step, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSnapshot {
    /// Optimizer steps taken before this snapshot (0 = θ_i).
    pub step: u64,
    /// Tensors in module traversal order.
    pub tensors: Vec<NamedTensor>,
}

/// The metadata key holding `{"step": N, "producer": "linesweep X.Y.Z"}`.
pub const META_KEY: &str = "linesweep";

fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Gathers every float tensor of a module, flattened, in traversal order.
struct Gather {
    flat: Vec<Tensor<1>>,
    device: Option<Device>,
    all_f32: bool,
}

impl ModuleVisitor for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        self.device.get_or_insert_with(|| t.device());
        self.all_f32 &= t.dtype() == DType::F32;
        self.flat.push(t.flatten::<1>(0, D - 1));
    }
}

/// Replaces every float tensor of a module, in traversal order, by its values in `data` on
/// the host.
struct Scatter<'a> {
    data: &'a [f32],
    offset: usize,
    host: Device,
    short: bool,
}

impl ModuleMapper for Scatter<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.val().shape();
        let n = shape.num_elements();
        let Some(values) = self.data.get(self.offset..self.offset + n) else {
            self.short = true;
            return param;
        };
        self.offset += n;
        let host = self.host.clone();
        param.map(|_| Tensor::from_data(TensorData::new(values.to_vec(), shape), &host))
    }
}

/// A copy of `model` on the host (flex) device, read back in one transfer.
///
/// Reading a GPU module tensor by tensor costs one device synchronisation per tensor (a
/// ResNet-20 has about a hundred); concatenating them on the device first costs one.
/// Returns `None` when the module already lives on the host (or holds other than f32
/// tensors, which [`HostSnapshot::capture`] refuses by name).
fn to_host<M: Module>(model: &M) -> Result<Option<M>, SnapshotError> {
    let on_host = |d: &Device| *d == Device::flex();
    to_host_unless(model, on_host)
}

fn to_host_unless<M: Module>(
    model: &M,
    skip: impl Fn(&Device) -> bool,
) -> Result<Option<M>, SnapshotError> {
    let mut gather = Gather {
        flat: Vec::new(),
        device: None,
        all_f32: true,
    };
    model.visit(&mut gather);
    match &gather.device {
        Some(d) if gather.all_f32 && !skip(d) => {}
        _ => return Ok(None),
    }
    let host = Device::flex();
    let data: Vec<f32> = Tensor::cat(gather.flat, 0)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| SnapshotError::Device {
            name: "(all tensors)".into(),
            message: format!("{e:?}"),
        })?;
    // `valid()` gives the copy fresh batch-norm running states: mapping a running state
    // replaces its value in place, and the original's must stay on the device.
    let mut scatter = Scatter {
        data: &data,
        offset: 0,
        host,
        short: false,
    };
    let copy = model.valid().map(&mut scatter);
    if scatter.short || scatter.offset != data.len() {
        return Err(SnapshotError::Device {
            name: "(all tensors)".into(),
            message: "the module's tensors changed while it was copied".into(),
        });
    }
    Ok(Some(copy))
}

impl HostSnapshot {
    /// Copies every float tensor of `model` to the host, under PyTorch names and layouts.
    pub fn capture<M: Module>(model: &M, step: u64) -> Result<Self, SnapshotError> {
        let host = to_host(model)?;
        let model = host.as_ref().unwrap_or(model);
        let collected = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true);
        let mut tensors = Vec::with_capacity(collected.len());
        for t in collected {
            if t.dtype != DType::F32 {
                return Err(SnapshotError::Dtype {
                    name: t.name.clone(),
                    dtype: format!("{:?}", t.dtype),
                });
            }
            let shape = t.shape.to_vec();
            let (name, _, _, _, bytes) = t.into_parts().map_err(|e| SnapshotError::Device {
                name: String::new(),
                message: e.to_string(),
            })?;
            let data = f32s_from_le(&bytes);
            let kind = if is_buffer(&name) {
                TensorKind::Buffer
            } else {
                TensorKind::Parameter
            };
            tensors.push(NamedTensor {
                name,
                shape,
                data,
                kind,
            });
        }
        Ok(Self { step, tensors })
    }

    /// All parameters (never buffers) concatenated in name order: the vector θ of the
    /// trajectory geometry. Name order, not traversal order, so that a snapshot read back
    /// from its file (a resumed attempt) gives the same vector as the one captured.
    pub fn parameter_vector(&self) -> Vec<f32> {
        let mut params: Vec<&NamedTensor> = self
            .tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Parameter)
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        let n = params.iter().map(|t| t.data.len()).sum();
        let mut out = Vec::with_capacity(n);
        for t in params {
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.tensors
            .iter()
            .filter(|t| t.kind == TensorKind::Parameter)
            .map(|t| t.data.len())
            .sum()
    }

    /// The safetensors file: every tensor, plus `num_batches_tracked` (i64, = `step`) for each
    /// batch-norm layer, and `step` in the metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, SnapshotError> {
        let counter = (self.step as i64).to_le_bytes();
        let mut owned: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = self
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    f32s_to_le(&t.data),
                    t.shape.clone(),
                    Dtype::F32,
                )
            })
            .collect();
        for t in &self.tensors {
            if let Some(prefix) = t.name.strip_suffix("running_mean") {
                owned.push((
                    format!("{prefix}num_batches_tracked"),
                    counter.to_vec(),
                    vec![],
                    Dtype::I64,
                ));
            }
        }
        let views = owned
            .iter()
            .map(|(name, bytes, shape, dtype)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| SnapshotError::Format {
                        file: name.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // One metadata key: the container stores metadata in a HashMap, whose iteration order
        // (and so the file's bytes) would differ between runs with several keys.
        let meta = HashMap::from([(
            META_KEY.to_owned(),
            format!(
                "{{\"step\":{},\"producer\":\"linesweep {}\"}}",
                self.step,
                crate::CODE_VERSION
            ),
        )]);
        safetensors::serialize(views, Some(meta)).map_err(|e| SnapshotError::Format {
            file: "<memory>".into(),
            message: e.to_string(),
        })
    }

    /// Decodes a file written by [`to_safetensors`](Self::to_safetensors), validating it;
    /// `file` names the source in errors. Tensors come back in name order.
    pub fn from_safetensors(bytes: &[u8], file: &str) -> Result<Self, SnapshotError> {
        let bad = |message: String| SnapshotError::Format {
            file: file.to_owned(),
            message,
        };
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["step"].as_u64())
            .ok_or_else(|| bad(format!("no `{META_KEY}.step` in the metadata")))?;
        let mut tensors = Vec::new();
        let mut names = st.names();
        names.sort_unstable();
        for name in names {
            let view = st.tensor(name).map_err(|e| bad(e.to_string()))?;
            match view.dtype() {
                Dtype::F32 => tensors.push(NamedTensor {
                    name: name.to_owned(),
                    shape: view.shape().to_vec(),
                    data: f32s_from_le(view.data()),
                    kind: if is_buffer(name) {
                        TensorKind::Buffer
                    } else {
                        TensorKind::Parameter
                    },
                }),
                Dtype::I64 if name.ends_with("num_batches_tracked") => {}
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has unsupported dtype {other:?}"
                    )));
                }
            }
        }
        Ok(Self { step, tensors })
    }
}

fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32s_to_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_one_transfer_host_copy_captures_what_the_model_holds() {
        use crate::config::{Arch, ModelConfig, Norm};
        use crate::model::Net;
        let device = Device::flex().autodiff();
        device.seed(5);
        let cfg = ModelConfig {
            arch: Arch::Resnet20,
            norm: Some(Norm::Batch),
            ..ModelConfig::default()
        };
        let net = Net::new(&cfg, [3, 8, 8], 4, &device);
        // A training-mode pass gives the running statistics values other than 0 and 1.
        let x = Tensor::<4>::random([2, 3, 8, 8], burn::tensor::Distribution::Default, &device);
        let _ = net.forward(x);
        let net = net.valid();
        let copy = to_host_unless(&net, |_| false).unwrap().unwrap();
        let (a, b) = (
            HostSnapshot::capture(&net, 3).unwrap(),
            HostSnapshot::capture(&copy, 3).unwrap(),
        );
        assert_eq!(a, b);
        assert!(
            a.tensors
                .iter()
                .any(|t| t.name.ends_with("running_mean") && t.data.iter().any(|v| *v != 0.0))
        );
        // The original's running statistics are untouched (still its own, still usable).
        assert_eq!(HostSnapshot::capture(&net, 3).unwrap(), a);
    }
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::Mlp;

    #[test]
    fn names_and_shapes_match_pytorch() {
        let device = Device::flex();
        device.seed(1);
        let cfg = ModelConfig {
            hidden: vec![6, 5],
            norm: Some(crate::config::Norm::Batch),
            ..ModelConfig::default()
        };
        let m = Mlp::new(&cfg, 4, 3, &device);
        let s = HostSnapshot::capture(&m, 0).unwrap();
        let got: Vec<(&str, &[usize], TensorKind)> = s
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice(), t.kind))
            .collect();
        use TensorKind::{Buffer as B, Parameter as P};
        let want: Vec<(&str, &[usize], TensorKind)> = vec![
            ("layers.0.weight", &[6, 4], P),
            ("layers.0.bias", &[6], P),
            ("layers.1.weight", &[5, 6], P),
            ("layers.1.bias", &[5], P),
            ("layers.2.weight", &[3, 5], P),
            ("layers.2.bias", &[3], P),
            ("norms.0.weight", &[6], P),
            ("norms.0.bias", &[6], P),
            ("norms.0.running_mean", &[6], B),
            ("norms.0.running_var", &[6], B),
            ("norms.1.weight", &[5], P),
            ("norms.1.bias", &[5], P),
            ("norms.1.running_mean", &[5], B),
            ("norms.1.running_var", &[5], B),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|t| t.0);
        let mut want_sorted = want.clone();
        want_sorted.sort_by_key(|t| t.0);
        assert_eq!(got_sorted, want_sorted);
        assert_eq!(
            s.parameter_count(),
            4 * 6 + 6 + 6 * 5 + 5 + 5 * 3 + 3 + 2 * 6 + 2 * 5
        );
    }

    #[test]
    fn linear_weight_is_transposed_to_out_by_in() {
        let device = Device::flex();
        let cfg = ModelConfig {
            hidden: vec![],
            ..ModelConfig::default()
        };
        let m = Mlp::new(&cfg, 2, 3, &device);
        let s = HostSnapshot::capture(&m, 0).unwrap();
        let w = s
            .tensors
            .iter()
            .find(|t| t.name == "layers.0.weight")
            .unwrap();
        // PyTorch's y = x·Wᵀ + b: logits for x = e₀ are column 0 of W (its first `in` entry
        // of every row).
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
        let b = s
            .tensors
            .iter()
            .find(|t| t.name == "layers.0.bias")
            .unwrap();
        let y: Vec<f32> = m.forward(x).into_data().try_into_vec::<f32>().unwrap();
        for (o, yo) in y.iter().enumerate() {
            assert!((yo - (w.data[o * 2] + b.data[o])).abs() < 1e-6);
        }
    }

    #[test]
    fn safetensors_round_trip_with_batch_counter() {
        let device = Device::flex();
        let cfg = ModelConfig {
            hidden: vec![3],
            norm: Some(crate::config::Norm::Batch),
            ..ModelConfig::default()
        };
        let s = HostSnapshot::capture(&Mlp::new(&cfg, 2, 2, &device), 42).unwrap();
        let bytes = s.to_safetensors().unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let counter = st.tensor("norms.0.num_batches_tracked").unwrap();
        assert_eq!((counter.dtype(), counter.shape()), (Dtype::I64, &[][..]));
        assert_eq!(i64::from_le_bytes(counter.data().try_into().unwrap()), 42);
        let back = HostSnapshot::from_safetensors(&bytes, "x.safetensors").unwrap();
        assert_eq!(back.step, 42);
        let mut orig = s.tensors.clone();
        orig.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back.tensors, orig);
        let err =
            HostSnapshot::from_safetensors(&bytes[..bytes.len() / 2], "x.safetensors").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.safetensors: not a valid snapshot"),
            "{err}"
        );
    }
}
