//! GPU discovery behind one trait: a declared inventory (tests, demos; marked
//! simulated) and the CPU-only fallback. NVML comes behind the `nvml` feature.

pub mod declared;
pub mod none;

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
/// otherwise the CPU-only fallback.
pub fn from_args(simulate: Option<&str>) -> anyhow::Result<Box<dyn Inventory>> {
    match simulate {
        Some(spec) => Ok(Box::new(declared::Declared::parse(spec)?)),
        None => {
            tracing::info!("no GPU library in this build: running pipelines on the CPU device");
            Ok(Box::new(none::CpuOnly))
        }
    }
}
