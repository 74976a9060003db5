//! The CPU-only fallback: no GPU; pipelines run on the CPU device, budgeted
//! against host memory.

use gogrid_crds::gpu_node::GpuInfo;

use super::Inventory;

/// A node without GPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuOnly;

impl Inventory for CpuOnly {
    fn read(&self) -> anyhow::Result<Vec<GpuInfo>> {
        Ok(Vec::new())
    }

    fn simulated(&self) -> bool {
        false
    }

    fn device(&self) -> &'static str {
        "cpu"
    }
}

/// Total host memory in bytes, from `/proc/meminfo` (0 when unreadable).
pub fn host_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo").map_or(0, |s| parse_meminfo(&s))
}

fn parse_meminfo(text: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<i64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        assert_eq!(
            parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            24_576_000 * 1024
        );
        assert_eq!(parse_meminfo("garbage"), 0);
    }
}
