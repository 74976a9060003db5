//! GPU discovery through NVML (`nvml-wrapper`, which loads libnvidia-ml at run
//! time, so the feature builds without the CUDA toolkit): every GPU's identity,
//! memory, utilisation, and what other processes hold and use on it.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::Context as _;
use gogrid_crds::gpu_node::{GpuInfo, GpuProcess};
use nvml_wrapper::Nvml as Library;
use nvml_wrapper::enums::device::UsedGpuMemory;

use super::Inventory;
use super::cuda::CudaDevices;

/// Processes listed per GPU in the GpuNode (largest first).
const MAX_PROCESSES: usize = 16;

/// The NVML-backed inventory.
pub struct Nvml {
    library: Library,
    /// The agent's own PID: its memory and load are not "other processes'".
    own_pid: u32,
    /// Per GPU, the timestamp of the newest utilisation sample already read.
    last_sample: Mutex<HashMap<u32, u64>>,
    /// The CUDA driver's view (ordinals by UUID); empty without libcuda.
    cuda: CudaDevices,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml")
            .field("own_pid", &self.own_pid)
            .finish()
    }
}

impl Nvml {
    /// Open NVML. Fails where the driver library is absent (CPU-only nodes).
    pub fn open() -> anyhow::Result<Self> {
        let library = Library::init().context("initialising NVML (libnvidia-ml.so.1)")?;
        if let Ok(version) = library.sys_driver_version() {
            tracing::info!(driver = %version, "NVML opened");
        }
        let cuda = CudaDevices::open().unwrap_or_else(|e| {
            tracing::info!(
                error = format!("{e:#}"),
                "the CUDA driver is not usable: GPUs are reported, pipelines run on the CPU device"
            );
            CudaDevices::default()
        });
        if !cuda.is_empty() {
            tracing::info!(devices = cuda.len(), "CUDA driver opened");
        }
        Ok(Self {
            library,
            own_pid: std::process::id(),
            last_sample: Mutex::new(HashMap::new()),
            cuda,
        })
    }

    fn read_one(&self, index: u32) -> anyhow::Result<GpuInfo> {
        let device = self
            .library
            .device_by_index(index)
            .with_context(|| format!("NVML device {index}"))?;
        let memory = device
            .memory_info()
            .with_context(|| format!("memory of GPU {index}"))?;
        // Utilisation and process lists are optional on some boards (NotSupported).
        let utilization = device.utilization_rates().map(|u| u.gpu).unwrap_or(0);
        let mut processes: HashMap<u32, GpuProcess> = HashMap::new();
        let listed = device
            .running_compute_processes()
            .into_iter()
            .chain(device.running_graphics_processes())
            .flatten();
        for p in listed.filter(|p| p.pid != self.own_pid) {
            let bytes = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => i64::try_from(b).unwrap_or(i64::MAX),
                UsedGpuMemory::Unavailable => 0,
            };
            let entry = processes.entry(p.pid).or_insert(GpuProcess {
                pid: p.pid,
                ..Default::default()
            });
            entry.memory_bytes = entry.memory_bytes.max(bytes);
        }
        let since = self
            .last_sample
            .lock()
            .ok()
            .and_then(|m| m.get(&index).copied());
        let mut newest = since.unwrap_or(0);
        let mut other_util = 0u32;
        if let Ok(samples) = device.process_utilization_stats(since) {
            let mut per_pid: HashMap<u32, u32> = HashMap::new();
            for s in samples {
                newest = newest.max(s.timestamp);
                if s.pid != self.own_pid {
                    let u = per_pid.entry(s.pid).or_default();
                    *u = (*u).max(s.sm_util);
                }
            }
            for (pid, util) in per_pid {
                other_util = other_util.saturating_add(util);
                processes
                    .entry(pid)
                    .or_insert(GpuProcess {
                        pid,
                        ..Default::default()
                    })
                    .utilization_percent = util;
            }
        }
        if let Ok(mut m) = self.last_sample.lock() {
            m.insert(index, newest);
        }
        let mut others: Vec<GpuProcess> = processes.into_values().collect();
        others.sort_by(|a, b| b.memory_bytes.cmp(&a.memory_bytes).then(a.pid.cmp(&b.pid)));
        let other_memory = others.iter().map(|p| p.memory_bytes).sum();
        others.truncate(MAX_PROCESSES);
        Ok(GpuInfo {
            index,
            uuid: device.uuid().unwrap_or_default(),
            name: device.name().unwrap_or_default(),
            memory_total_bytes: i64::try_from(memory.total).unwrap_or(i64::MAX),
            memory_used_bytes: i64::try_from(memory.used).unwrap_or(i64::MAX),
            other_processes_memory_bytes: other_memory,
            utilization_percent: utilization,
            other_processes_utilization_percent: other_util.min(100),
            other_processes: others,
        })
    }
}

impl Inventory for Nvml {
    fn read(&self) -> anyhow::Result<Vec<GpuInfo>> {
        let count = self.library.device_count().context("NVML device count")?;
        (0..count).map(|i| self.read_one(i)).collect()
    }

    fn simulated(&self) -> bool {
        false
    }

    fn cuda_ordinal(&self, index: u32) -> Option<usize> {
        if !cfg!(feature = "cuda") {
            return None;
        }
        let uuid = self.library.device_by_index(index).ok()?.uuid().ok()?;
        self.cuda.ordinal(&uuid)
    }

    fn cuda_free_bytes(&self, index: u32) -> Option<u64> {
        let ordinal = self.cuda_ordinal(index)?;
        match super::cuda::memory(ordinal) {
            Ok((free, _)) => Some(free),
            Err(e) => {
                tracing::warn!(
                    gpu = index,
                    error = format!("{e:#}"),
                    "CUDA free memory unreadable"
                );
                None
            }
        }
    }

    fn device(&self) -> &'static str {
        if cfg!(feature = "cuda") && !self.cuda.is_empty() {
            "cuda"
        } else {
            "cpu"
        }
    }
}
