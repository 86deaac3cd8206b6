//! Which wgpu adapters this machine has, asked before a device is made: CubeCL panics
//! ("Unable to acquire wgpu device") on a machine without a Vulkan driver or without the
//! adapter asked for, deep inside the first kernel launch. Asking first turns both into one
//! error that names what is missing and lists what exists.
//!
//! The selection mirrors cubecl-wgpu 0.11's (`runtime.rs`: `settle`, `select_from_adapter_list`):
//! the graphics API is the first of the candidates with a hardware adapter, else the first
//! with any; `DiscreteGpu(n)` is the n-th discrete GPU of that API, `Cpu` its first software
//! adapter. So the adapter named here is the one the device will run on.

use cubecl::wgpu::wgpu::{self, Backend, DeviceType};

use super::{Adapter, DeviceError};

/// The graphics APIs a `wgpu` device may settle on (cubecl-wgpu's `AutoGraphicsApi::chain`
/// off macOS), or the one `vulkan` pins.
pub(super) fn candidates(vulkan_only: bool) -> Vec<Backend> {
    if vulkan_only {
        vec![Backend::Vulkan]
    } else if cfg!(target_os = "macos") {
        vec![Backend::Metal]
    } else {
        vec![Backend::Vulkan, Backend::Dx12, Backend::Gl]
    }
}

/// The adapters `api` (compiled in) has, through an instance limited to it.
fn enumerate(api: Backend) -> Vec<wgpu::AdapterInfo> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    cubecl::future::block_on(instance.enumerate_adapters(api.into()))
        .iter()
        .map(wgpu::Adapter::get_info)
        .collect()
}

/// One adapter as a person reads it: `discrete GPU "NVIDIA H100" (Vulkan, NVIDIA 550.54)`.
fn describe(a: &wgpu::AdapterInfo) -> String {
    let kind = match a.device_type {
        DeviceType::DiscreteGpu => "discrete GPU",
        DeviceType::IntegratedGpu => "integrated GPU",
        DeviceType::VirtualGpu => "virtual GPU",
        DeviceType::Cpu => "software (CPU)",
        DeviceType::Other => "other",
    };
    format!(
        "{kind} \"{}\" ({:?}, {} {})",
        a.name, a.backend, a.driver, a.driver_info
    )
}

/// What identifies the adapter and its driver: a device check's verdict holds while this
/// stays the same.
fn identity(a: &wgpu::AdapterInfo) -> String {
    format!(
        "{} [{:04x}:{:04x}] {:?} {} {}",
        a.name, a.vendor, a.device, a.backend, a.driver, a.driver_info
    )
}

/// Finds the adapter `spec` names and returns its identity, or says what is missing.
pub(super) fn find(spec: &str, apis: &[Backend], adapter: Adapter) -> Result<String, DeviceError> {
    let listed: Vec<(Backend, Vec<wgpu::AdapterInfo>)> = apis
        .iter()
        .filter(|&&api| wgpu::Instance::enabled_backend_features().contains(api.into()))
        .map(|&api| (api, enumerate(api)))
        .collect();
    select(spec, &listed, adapter, cfg!(feature = "vulkan"))
}

/// [`find`] over adapters already listed per graphics API.
fn select(
    spec: &str,
    listed: &[(Backend, Vec<wgpu::AdapterInfo>)],
    adapter: Adapter,
    spirv: bool,
) -> Result<String, DeviceError> {
    let fail = |problem: String| DeviceError::NoDriver {
        device: spec.to_owned(),
        problem,
    };
    let settled = listed
        .iter()
        .find(|(_, a)| a.iter().any(|a| a.device_type != DeviceType::Cpu))
        .or_else(|| listed.iter().find(|(_, a)| !a.is_empty()));
    let Some((api, found)) = settled else {
        let apis: Vec<String> = listed.iter().map(|(api, _)| format!("{api:?}")).collect();
        let apis = if apis.is_empty() {
            vec!["GPU".to_owned()]
        } else {
            apis
        };
        return Err(fail(format!(
            "no {} adapter on this machine ({}); install the GPU's driver (NVIDIA, AMD, Intel), \
             or Mesa's software Vulkan driver lavapipe (Debian: mesa-vulkan-drivers) to run \
             the GPU code path on the CPU as {}:cpu",
            apis.join(" or "),
            loader_state(),
            spec.split(':').next().unwrap_or(spec)
        )));
    };
    let (wanted, index) = match adapter {
        Adapter::Gpu(i) => (DeviceType::DiscreteGpu, i),
        Adapter::Software => (DeviceType::Cpu, 0),
    };
    if let Some(a) = found.iter().filter(|a| a.device_type == wanted).nth(index) {
        if spirv && *api == Backend::Vulkan && a.driver.contains("llvmpipe") {
            // docs/performance.md: Mesa's lavapipe (22.3 and 25.0) segfaults compiling
            // CubeCL's SPIR-V matmul kernels; the WGSL path of a `wgpu` build runs there.
            return Err(fail(format!(
                "Mesa's lavapipe (\"{}\") crashes compiling the SPIR-V kernels of a binary \
                 built with the `vulkan` feature; for the GPU code path on the CPU use \
                 `wgpu:cpu` in a binary built with `--features wgpu` only",
                a.name
            )));
        }
        return Ok(identity(a));
    }
    let kind = spec.split(':').next().unwrap_or(spec);
    let mut names = Vec::new();
    let mut gpu = 0;
    for a in found {
        let name = match a.device_type {
            DeviceType::DiscreteGpu => {
                gpu += 1;
                format!("{kind}:{}", gpu - 1)
            }
            DeviceType::Cpu => format!("{kind}:cpu"),
            _ => "(not selectable)".into(),
        };
        names.push(format!("{name} = {}", describe(a)));
    }
    Err(fail(format!(
        "no such adapter on {api:?}; this machine has {}: {}",
        found.len(),
        names.join("; ")
    )))
}

/// Whether the Vulkan loader itself is missing, which no driver can make up for.
fn loader_state() -> &'static str {
    let name = c"libvulkan.so.1";
    // SAFETY: dlopen with a valid C string, only to ask whether the loader exists; the handle
    // is closed at once.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if h.is_null() {
        "the Vulkan loader libvulkan.so.1 is not installed (Debian: libvulkan1)"
    } else {
        // SAFETY: a handle dlopen returned.
        unsafe { libc::dlclose(h) };
        "the Vulkan loader is installed but lists no driver"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, t: DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.into(),
            vendor: 0x10de,
            device: 1,
            driver: "drv".into(),
            driver_info: "1.0".into(),
            ..wgpu::AdapterInfo::new(t, Backend::Vulkan)
        }
    }

    #[test]
    fn the_nth_discrete_gpu_or_the_software_adapter_is_found() {
        let listed = vec![(
            Backend::Vulkan,
            vec![
                info("llvmpipe", DeviceType::Cpu),
                info("A", DeviceType::DiscreteGpu),
                info("B", DeviceType::DiscreteGpu),
            ],
        )];
        let id = select("vulkan:1", &listed, Adapter::Gpu(1), true).unwrap();
        assert!(id.starts_with("B [10de:0001] Vulkan drv 1.0"), "{id}");
        let id = select("vulkan:cpu", &listed, Adapter::Software, false).unwrap();
        assert!(id.starts_with("llvmpipe"), "{id}");
    }

    #[test]
    fn lavapipe_is_refused_where_spirv_kernels_would_crash_it() {
        let mut lvp = info("llvmpipe (LLVM 15.0.6, 256 bits)", DeviceType::Cpu);
        lvp.driver = "llvmpipe".into();
        let listed = vec![(Backend::Vulkan, vec![lvp])];
        let err = select("vulkan:cpu", &listed, Adapter::Software, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("crashes compiling the SPIR-V kernels") && err.contains("wgpu:cpu"),
            "{err}"
        );
        assert!(select("wgpu:cpu", &listed, Adapter::Software, false).is_ok());
    }

    #[test]
    fn a_missing_index_lists_what_exists() {
        let listed = vec![(Backend::Vulkan, vec![info("llvmpipe", DeviceType::Cpu)])];
        let err = select("vulkan:2", &listed, Adapter::Gpu(2), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("device `vulkan:2`: no such adapter on Vulkan; this machine has 1: ")
                && err.contains("vulkan:cpu = software (CPU) \"llvmpipe\""),
            "{err}"
        );
    }

    #[test]
    fn no_adapter_at_all_names_the_driver_to_install() {
        let listed = vec![(Backend::Vulkan, vec![]), (Backend::Gl, vec![])];
        let err = select("wgpu:0", &listed, Adapter::Gpu(0), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no Vulkan or Gl adapter on this machine")
                && err.contains("mesa-vulkan-drivers")
                && err.contains("wgpu:cpu"),
            "{err}"
        );
    }
}
