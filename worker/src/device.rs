//! `--device` strings → burn devices. `cpu` (burn's pure-Rust `flex` backend) is always
//! available; `wgpu[:N]`, `vulkan[:N]` and `cuda[:N]` need the cargo features of the same
//! name. `vulkan` is wgpu pinned to Vulkan and compiling kernels to SPIR-V, which is what
//! unlocks tensor-core matmuls and low-precision types on NVIDIA and AMD GPUs.
//!
//! **Architecture invariant:** nothing in linesweep calls `Device::default()`: with several
//! backends compiled in, feature unification would silently pick a GPU.

use burn::prelude::*;

/// A device string that names no usable device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the known forms.
    #[error("unknown device `{0}`: expected cpu, wgpu[:N], vulkan[:N] or cuda[:N]")]
    Unknown(String),
    /// The backend is not compiled into this binary.
    #[error(
        "device `{device}` needs the `{feature}` feature: rebuild with `cargo build --release --features {feature}`"
    )]
    NotCompiled {
        device: String,
        feature: &'static str,
    },
}

/// A burn device and the name results record for it.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    /// The runtime device.
    pub device: Device,
    /// `cpu`, `wgpu:N`, `vulkan:N` or `cuda:N`.
    pub name: String,
}

impl ComputeDevice {
    /// The CPU (`flex`) device, the default of every command and test.
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            name: "cpu".into(),
        }
    }
}

/// Parses `cpu`, `flex`, `wgpu[:N]`, `vulkan[:N]`, `cuda[:N]`.
pub fn parse(spec: &str) -> Result<ComputeDevice, DeviceError> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => {
            let idx: usize = i
                .parse()
                .map_err(|_| DeviceError::Unknown(spec.to_owned()))?;
            (k, idx)
        }
        None => (spec, 0),
    };
    match kind {
        "cpu" | "flex" if !spec.contains(':') => Ok(ComputeDevice::cpu()),
        "wgpu" => Ok(ComputeDevice {
            device: wgpu(spec, index)?,
            name: format!("wgpu:{index}"),
        }),
        "vulkan" => Ok(ComputeDevice {
            device: vulkan(spec, index)?,
            name: format!("vulkan:{index}"),
        }),
        "cuda" => Ok(ComputeDevice {
            device: cuda(spec, index)?,
            name: format!("cuda:{index}"),
        }),
        _ => Err(DeviceError::Unknown(spec.to_owned())),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu(_: &str, index: usize) -> Result<Device, DeviceError> {
    Ok(Device::wgpu(DeviceKind::DiscreteGpu(index)))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(spec: &str, _: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled {
        device: spec.to_owned(),
        feature: "wgpu",
    })
}

#[cfg(feature = "vulkan")]
fn vulkan(_: &str, index: usize) -> Result<Device, DeviceError> {
    Ok(Device::vulkan(DeviceKind::DiscreteGpu(index)))
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(spec: &str, _: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled {
        device: spec.to_owned(),
        feature: "vulkan",
    })
}

#[cfg(feature = "cuda")]
fn cuda(_: &str, index: usize) -> Result<Device, DeviceError> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(spec: &str, _: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled {
        device: spec.to_owned(),
        feature: "cuda",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_junk_is_refused() {
        assert!(parse("cpu").is_ok());
        assert!(parse("flex").is_ok());
        assert_eq!(
            parse("tpu").unwrap_err(),
            DeviceError::Unknown("tpu".into())
        );
        assert_eq!(
            parse("cuda:x").unwrap_err(),
            DeviceError::Unknown("cuda:x".into())
        );
        assert_eq!(
            parse("cpu:1").unwrap_err(),
            DeviceError::Unknown("cpu:1".into())
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = parse("cuda:1").unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[cfg(not(feature = "vulkan"))]
    #[test]
    fn missing_vulkan_names_its_feature() {
        let err = parse("vulkan:0").unwrap_err().to_string();
        assert!(err.contains("--features vulkan"), "{err}");
    }
}
