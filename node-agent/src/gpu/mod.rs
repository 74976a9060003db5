//! GPU discovery behind one trait: NVML (the `nvml` feature), a declared
//! inventory (tests, demos; marked simulated) and the CPU-only fallback.

pub mod declared;
pub mod none;
#[cfg(feature = "nvml")]
pub mod nvml;

use gogrid_crds::gpu_node::GpuInfo;

/// Where the agent learns about its node's GPUs.
pub trait Inventory: Send + Sync + std::fmt::Debug {
    /// The GPUs now, by index.
    fn read(&self) -> anyhow::Result<Vec<GpuInfo>>;
    /// Whether the numbers are declared rather than measured.
    fn simulated(&self) -> bool;
    /// The compute device pipelines run on, for status (`cpu`, `cuda`).
    fn device(&self) -> &'static str;
}

/// The inventory the command line asks for: declared when `simulate` is set,
/// otherwise NVML when built in and present, otherwise the CPU-only fallback
/// (said once, at start).
pub fn from_args(simulate: Option<&str>) -> anyhow::Result<Box<dyn Inventory>> {
    if let Some(spec) = simulate {
        return Ok(Box::new(declared::Declared::parse(spec)?));
    }
    #[cfg(feature = "nvml")]
    match nvml::Nvml::open() {
        Ok(nvml) => return Ok(Box::new(nvml)),
        Err(e) => tracing::info!(
            error = format!("{e:#}"),
            "NVML is not available: no GPUs, running pipelines on the CPU device"
        ),
    }
    #[cfg(not(feature = "nvml"))]
    tracing::info!("built without the nvml feature: no GPUs, running pipelines on the CPU device");
    Ok(Box::new(none::CpuOnly))
}
