//! CUDA driver queries through cudarc, which loads `libcuda.so` at run time (the
//! `gpu` feature builds without the CUDA toolkit).
//!
//! Two things NVML cannot tell the agent:
//! - which CUDA ordinal a GPU has: NVML numbers GPUs by PCI bus, the CUDA driver
//!   (by default) fastest first, and `CUDA_VISIBLE_DEVICES` renumbers them, so a
//!   stage planned on NVML's `gpu1` is placed by UUID, never by index;
//! - what this process can really allocate there (`cuMemGetInfo`). Inside a
//!   container NVML does not list other containers' processes, so "total minus
//!   what the listed processes hold" can promise memory that is taken; the free
//!   memory the driver reports is the ground truth a load is checked against.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use cudarc::driver::{CudaContext, result};

/// The CUDA devices this process sees, by UUID.
#[derive(Debug, Clone, Default)]
pub struct CudaDevices {
    by_uuid: HashMap<String, usize>,
}

/// NVML's spelling of a GPU UUID: `GPU-` and 8-4-4-4-12 lowercase hex digits.
pub fn nvml_uuid(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(40);
    s.push_str("GPU-");
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

impl CudaDevices {
    /// Initialise the driver API and list the devices. Fails where `libcuda`
    /// is absent. Creates no context (no device memory is taken).
    pub fn open() -> anyhow::Result<Self> {
        // cudarc panics when it cannot load the library: look for it first.
        if !driver_library_present() {
            anyhow::bail!("the CUDA driver library (libcuda.so.1) is not installed");
        }
        result::init().context("initialising the CUDA driver (libcuda.so)")?;
        let count = result::device::get_count().context("CUDA device count")?;
        let mut by_uuid = HashMap::new();
        for ordinal in 0..count {
            let device =
                result::device::get(ordinal).with_context(|| format!("CUDA device {ordinal}"))?;
            let uuid = result::device::get_uuid(device)
                .with_context(|| format!("UUID of CUDA device {ordinal}"))?;
            let bytes: [u8; 16] = uuid.bytes.map(|b| b as u8);
            by_uuid.insert(nvml_uuid(&bytes), usize::try_from(ordinal).unwrap_or(0));
        }
        Ok(Self { by_uuid })
    }

    /// The CUDA ordinal of the GPU NVML names `uuid`; `None` when this process
    /// does not see it (e.g. left out of `CUDA_VISIBLE_DEVICES`).
    pub fn ordinal(&self, uuid: &str) -> Option<usize> {
        self.by_uuid.get(uuid).copied()
    }

    /// How many devices the driver shows this process.
    pub fn len(&self) -> usize {
        self.by_uuid.len()
    }

    /// Whether the driver shows no device.
    pub fn is_empty(&self) -> bool {
        self.by_uuid.is_empty()
    }
}

/// Whether `libcuda` can be loaded (a container given NVML's `utility`
/// capability but not `compute` has NVML without it).
#[allow(unsafe_code)]
fn driver_library_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].into_iter().any(|name| {
        // SAFETY: the NVIDIA driver library's initialisers have no
        // preconditions on the caller; the handle is dropped at once, and
        // cudarc loads it again for its own use.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Free and total bytes on CUDA device `ordinal`, as the driver sees them from
/// this process. Retains the device's primary context, the one candle's CUDA
/// backend also uses, so the query costs nothing once a pipeline runs there.
pub fn memory(ordinal: usize) -> anyhow::Result<(u64, u64)> {
    let context =
        CudaContext::new(ordinal).with_context(|| format!("CUDA context on device {ordinal}"))?;
    let (free, total) = context
        .mem_get_info()
        .with_context(|| format!("free memory of CUDA device {ordinal}"))?;
    Ok((free as u64, total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_spelled_like_nvml() {
        let bytes = [
            0x5c, 0x1b, 0x2e, 0x3f, 0x01, 0x02, 0xa3, 0xb4, 0xc5, 0xd6, 0xe7, 0xf8, 0x09, 0x1a,
            0x2b, 0x3c,
        ];
        assert_eq!(
            nvml_uuid(&bytes),
            "GPU-5c1b2e3f-0102-a3b4-c5d6-e7f8091a2b3c"
        );
    }

    #[test]
    fn without_a_driver_open_fails_with_a_sentence() {
        // CI machines have no libcuda; where one exists this lists devices.
        match CudaDevices::open() {
            Ok(devices) => assert!(devices.by_uuid.values().all(|&o| o < devices.len())),
            Err(e) => assert!(format!("{e:#}").contains("CUDA driver"), "{e:#}"),
        }
    }
}
