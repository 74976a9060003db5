//! GPU discovery behind one trait: NVML (the `nvml` feature), a declared
//! inventory (tests, demos; marked simulated) and the CPU-only fallback.

#[cfg(feature = "gpu")]
pub mod cuda;
pub mod declared;
pub mod none;
#[cfg(feature = "gpu")]
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
    /// The CUDA ordinal of GPU `index` where pipelines run on it through CUDA;
    /// `None` runs its stages on the CPU device (declared GPUs, builds
    /// without the `cuda` feature, nodes without the CUDA driver).
    fn cuda_ordinal(&self, index: u32) -> Option<usize> {
        let _ = index;
        None
    }
    /// The bytes the CUDA driver says this process can still allocate on GPU
    /// `index`, where its stages run through CUDA.
    fn cuda_free_bytes(&self, index: u32) -> Option<u64> {
        let _ = index;
        None
    }
}

/// The inventory the command line asks for: declared when `simulate` is set,
/// otherwise NVML when built in and present, otherwise the CPU-only fallback
/// (said once, at start).
pub fn from_args(simulate: Option<&str>) -> anyhow::Result<Box<dyn Inventory>> {
    if let Some(spec) = simulate {
        return Ok(Box::new(declared::Declared::parse(spec)?));
    }
    #[cfg(feature = "gpu")]
    match nvml::Nvml::open() {
        Ok(nvml) => return Ok(Box::new(nvml)),
        Err(e) => tracing::info!(
            error = format!("{e:#}"),
            "NVML is not available: no GPUs, running pipelines on the CPU device"
        ),
    }
    #[cfg(not(feature = "gpu"))]
    tracing::info!("built without the nvml feature: no GPUs, running pipelines on the CPU device");
    Ok(Box::new(none::CpuOnly))
}
