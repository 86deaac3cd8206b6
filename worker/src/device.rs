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
    #[error(
        "unknown device `{0}`: expected cpu, wgpu[:N], vulkan[:N], cuda[:N] (or wgpu:cpu / vulkan:cpu for a software GPU driver)"
    )]
    Unknown(String),
    /// The CUDA driver cannot be loaded or has no such device.
    #[error("device `{device}`: {problem}")]
    NoDriver { device: String, problem: String },
    /// The backend is not compiled into this binary.
    #[error("device `{device}` needs the `{feature}` feature: rebuild with `{}`", build_command(.feature))]
    NotCompiled {
        device: String,
        feature: &'static str,
    },
}

/// How to build a binary with `feature`: cuda's build needs the static LLVM first.
fn build_command(feature: &str) -> String {
    let build = format!("cargo build --release --features {feature}");
    if feature == "cuda" {
        format!("scripts/setup-llvm.sh && {build}")
    } else {
        build
    }
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
mod adapters;

/// What `cpu` reports as its adapter: no driver, nothing to change under a verdict.
pub const FLEX_ADAPTER: &str = "flex (pure-Rust CPU kernels)";

/// A burn device and the name results record for it.
#[derive(Debug, Clone)]
pub struct ComputeDevice {
    /// The runtime device.
    pub device: Device,
    /// `cpu`, `wgpu:N`, `vulkan:N` or `cuda:N`.
    pub name: String,
    /// The adapter and driver behind it, as the driver reports them (name, PCI ids, driver
    /// version): a device check's verdict holds while this is unchanged.
    pub adapter: String,
}

impl ComputeDevice {
    /// The CPU (`flex`) device, the default of every command and test.
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            name: "cpu".into(),
            adapter: FLEX_ADAPTER.into(),
        }
    }

    /// Whether this is burn's `flex` backend, the reference every other device is checked
    /// against.
    pub fn is_flex(&self) -> bool {
        self.name == "cpu"
    }
}

/// Which adapter of a backend: the N-th GPU, or (wgpu and vulkan only) a software driver that
/// runs the GPU code path on the CPU, such as Mesa's lavapipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Gpu(usize),
    Software,
}

impl Adapter {
    fn label(self) -> String {
        match self {
            Adapter::Gpu(i) => i.to_string(),
            Adapter::Software => "cpu".into(),
        }
    }
}

/// Parses `cpu`, `flex`, `wgpu[:N|:cpu]`, `vulkan[:N|:cpu]`, `cuda[:N]`.
pub fn parse(spec: &str) -> Result<ComputeDevice, DeviceError> {
    let unknown = || DeviceError::Unknown(spec.to_owned());
    let (kind, adapter) = match spec.split_once(':') {
        Some((k, "cpu")) if k != "cpu" && k != "flex" => (k, Adapter::Software),
        Some((k, i)) => (k, Adapter::Gpu(i.parse().map_err(|_| unknown())?)),
        None => (spec, Adapter::Gpu(0)),
    };
    let name = format!("{kind}:{}", adapter.label());
    let (device, adapter) = match (kind, adapter) {
        ("cpu" | "flex", _) if !spec.contains(':') => return Ok(ComputeDevice::cpu()),
        ("wgpu", a) => wgpu(spec, a)?,
        ("vulkan", a) => vulkan(spec, a)?,
        ("cuda", Adapter::Gpu(index)) => cuda(spec, index)?,
        _ => return Err(unknown()),
    };
    Ok(ComputeDevice {
        device,
        name,
        adapter,
    })
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn device_kind(adapter: Adapter) -> DeviceKind {
    match adapter {
        Adapter::Gpu(i) => DeviceKind::DiscreteGpu(i),
        Adapter::Software => DeviceKind::Cpu,
    }
}

/// Names the folder of the GPU kernels' tuning cache (see [`tune_cache_dir`]).
pub const TUNE_CACHE_ENV: &str = "LINESWEEP_TUNE_CACHE";

/// Where CubeCL keeps autotune results and compiled kernels between processes: the folder
/// named by `$LINESWEEP_TUNE_CACHE`, else `linesweep/cubecl` under the user cache folder
/// (`$XDG_CACHE_HOME` or `~/.cache`), else under the temporary folder. Every process of one
/// user on one machine shares it, so a worker tunes each shape once per machine, not once per
/// shard. CubeCL's own default (`target/` above the working directory) depends on where a
/// process happens to start.
pub fn tune_cache_dir() -> std::path::PathBuf {
    match std::env::var_os(TUNE_CACHE_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => dir.into(),
        None => dirs::cache_dir()
            .map(|d| d.join("linesweep").join("cubecl"))
            .unwrap_or_else(|| std::env::temp_dir().join("linesweep-cubecl")),
    }
}

/// Points CubeCL's persistent caches at [`tune_cache_dir`], once, before the first GPU device
/// exists. Settings from a `cubecl.toml` and `CUBECL_*` variables are kept; only the folder is
/// ours.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn configure_gpu_caches() {
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = tune_cache_dir();
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.environment.path = CacheConfig::Directory(dir.clone());
        if CubeClRuntimeConfig::try_set(config) {
            tracing::info!(cache = %dir.display(), "GPU kernel tuning cache");
        }
    });
}

/// A device and the identity of the adapter behind it.
type Found = (Device, String);

#[cfg(feature = "wgpu")]
fn wgpu(spec: &str, adapter: Adapter) -> Result<Found, DeviceError> {
    let identity = adapters::find(spec, &adapters::candidates(false), adapter)?;
    configure_gpu_caches();
    Ok((Device::wgpu(device_kind(adapter)), identity))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(spec: &str, _: Adapter) -> Result<Found, DeviceError> {
    Err(DeviceError::NotCompiled {
        device: spec.to_owned(),
        feature: "wgpu",
    })
}

#[cfg(feature = "vulkan")]
fn vulkan(spec: &str, adapter: Adapter) -> Result<Found, DeviceError> {
    let identity = adapters::find(spec, &adapters::candidates(true), adapter)?;
    configure_gpu_caches();
    Ok((Device::vulkan(device_kind(adapter)), identity))
}

#[cfg(not(feature = "vulkan"))]
fn vulkan(spec: &str, _: Adapter) -> Result<Found, DeviceError> {
    Err(DeviceError::NotCompiled {
        device: spec.to_owned(),
        feature: "vulkan",
    })
}

#[cfg(feature = "cuda")]
fn cuda(spec: &str, index: usize) -> Result<Found, DeviceError> {
    let identity = cuda_driver(spec, index)?;
    configure_gpu_caches();
    Ok((Device::cuda(index), identity))
}

/// Checks that the CUDA driver loads and has device `index`, before cudarc (which panics
/// with a backtrace when `libcuda.so` is missing) is asked for it, and returns the device's
/// identity (its name and the driver's version).
///
/// Hand-written against the driver API (a few symbols through `dlopen`) because the point is
/// to ask before any CUDA crate is involved; no crate offers a probe that cannot panic.
pub fn cuda_driver(spec: &str, index: usize) -> Result<String, DeviceError> {
    let fail = |problem: String| DeviceError::NoDriver {
        device: spec.to_owned(),
        problem,
    };
    let lib = ["libcuda.so.1", "libcuda.so"].iter().find_map(|name| {
        let name = std::ffi::CString::new(*name).ok()?;
        // SAFETY: dlopen with a valid C string; the handle is never closed (the driver stays
        // loaded for cudarc, as it would be anyway).
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        (!h.is_null()).then_some(h)
    });
    let Some(lib) = lib else {
        return Err(fail(
            "the NVIDIA driver is not installed (libcuda.so.1 cannot be loaded); install it, \
             or in a container run with the NVIDIA container toolkit (--gpus all)"
                .into(),
        ));
    };
    let symbol = |name: &str| {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: a symbol lookup in a handle that dlopen returned.
        let p = unsafe { libc::dlsym(lib, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (Some(init), Some(count)) = (symbol("cuInit"), symbol("cuDeviceGetCount")) else {
        return Err(fail("libcuda.so.1 has no cuInit/cuDeviceGetCount".into()));
    };
    // SAFETY: the driver API's signatures: CUresult cuInit(unsigned int) and
    // CUresult cuDeviceGetCount(int*).
    type CuInit = extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = extern "C" fn(*mut i32) -> i32;
    let (init, count) = unsafe {
        (
            std::mem::transmute::<*mut libc::c_void, CuInit>(init),
            std::mem::transmute::<*mut libc::c_void, CuDeviceGetCount>(count),
        )
    };
    let rc = init(0);
    if rc != 0 {
        return Err(fail(format!(
            "the CUDA driver failed to initialise (CUresult {rc}; 100 means no GPU is visible)"
        )));
    }
    let mut n = 0i32;
    let rc = count(&mut n);
    if rc != 0 || index >= n.max(0) as usize {
        let has = match n {
            ..=0 => "no CUDA device".to_owned(),
            1 => "1 CUDA device, cuda:0".to_owned(),
            n => format!("{n} CUDA devices, cuda:0 to cuda:{}", n - 1),
        };
        return Err(fail(format!(
            "this machine has {has}; there is no cuda:{index}"
        )));
    }
    Ok(cuda_identity(&symbol, index))
}

/// `NAME (CUDA driver V)` for device `index`, from whatever of the driver API answers.
fn cuda_identity(symbol: &dyn Fn(&str) -> Option<*mut libc::c_void>, index: usize) -> String {
    type CuDriverGetVersion = extern "C" fn(*mut i32) -> i32;
    type CuDeviceGet = extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = extern "C" fn(*mut libc::c_char, i32, i32) -> i32;
    let mut version = 0i32;
    if let Some(p) = symbol("cuDriverGetVersion") {
        // SAFETY: CUresult cuDriverGetVersion(int*).
        let f = unsafe { std::mem::transmute::<*mut libc::c_void, CuDriverGetVersion>(p) };
        f(&mut version);
    }
    let mut name = String::from("unknown CUDA device");
    if let (Some(get), Some(get_name)) = (symbol("cuDeviceGet"), symbol("cuDeviceGetName")) {
        // SAFETY: CUresult cuDeviceGet(CUdevice*, int) and
        // cuDeviceGetName(char*, int, CUdevice); the buffer outlives the call and its length
        // is passed.
        let (get, get_name) = unsafe {
            (
                std::mem::transmute::<*mut libc::c_void, CuDeviceGet>(get),
                std::mem::transmute::<*mut libc::c_void, CuDeviceGetName>(get_name),
            )
        };
        let mut dev = 0i32;
        let mut buf = [0 as libc::c_char; 256];
        if get(&mut dev, index as i32) == 0 && get_name(buf.as_mut_ptr(), 255, dev) == 0 {
            // SAFETY: the driver wrote a NUL-terminated string into the zeroed buffer.
            name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned();
        }
    }
    format!("{name} (CUDA driver {version})")
}

#[cfg(not(feature = "cuda"))]
fn cuda(spec: &str, _: usize) -> Result<Found, DeviceError> {
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
        for junk in ["cpu:cpu", "cuda:cpu", "vulkan:-1", "wgpu:"] {
            assert_eq!(parse(junk).unwrap_err(), DeviceError::Unknown(junk.into()));
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_backend_names_the_feature() {
        let err = parse("cuda:1").unwrap_err().to_string();
        assert!(
            err.contains("scripts/setup-llvm.sh && cargo build --release --features cuda"),
            "{err}"
        );
    }

    #[test]
    fn cuda_without_a_driver_is_one_clear_error() {
        // This machine and CI have no NVIDIA driver; where one exists, device 4096 does not.
        let err = cuda_driver("cuda:4096", 4096).unwrap_err().to_string();
        assert!(
            err.starts_with("device `cuda:4096`: ")
                && (err.contains("driver is not installed") || err.contains("no cuda:4096")),
            "{err}"
        );
    }

    #[test]
    fn the_tune_cache_is_a_user_folder_unless_named() {
        let dir = tune_cache_dir();
        if std::env::var_os(TUNE_CACHE_ENV).is_none() {
            assert!(dir.ends_with("linesweep/cubecl") || dir.ends_with("linesweep-cubecl"));
        }
    }

    #[cfg(not(feature = "vulkan"))]
    #[test]
    fn missing_vulkan_names_its_feature() {
        for spec in ["vulkan:0", "vulkan:cpu"] {
            let err = parse(spec).unwrap_err().to_string();
            assert!(err.contains("--features vulkan"), "{err}");
        }
    }
}
