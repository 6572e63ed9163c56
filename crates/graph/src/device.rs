//! Backend selection at run time, the fused/eager switch, and kernel-launch counting.
//!
//! "Fused" is Burn's fusion backend over CubeCL (wgpu or CUDA) — Kiln's compiled mode. "Eager" is
//! the same backend with every fuser removed, so each op is its own kernel. The fuser registry is
//! process-global and sealed by the first op, so the mode is chosen once per process.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn_cubecl::cubecl::logging::{LaunchObservation, LaunchObserver};
use burn_tensor::Device;

use crate::error::{Result, bail, err};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// CubeCL over wgpu: Vulkan, Metal or DX12 (lavapipe on machines without a GPU).
    Wgpu,
    /// CubeCL over CUDA (cargo feature `cuda`).
    Cuda,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }
    /// Whether the backend goes through Burn's fusion (and so distinguishes fused from eager).
    pub fn fuses(self) -> bool {
        !matches!(self, Backend::Flex)
    }
}

impl FromStr for Backend {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "flex" | "cpu" => Backend::Flex,
            "wgpu" | "vulkan" => Backend::Wgpu,
            "cuda" => Backend::Cuda,
            other => bail!(Device, "unknown backend '{other}' (flex, wgpu, cuda)"),
        })
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Fused,
    Eager,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fused => "fused",
            Mode::Eager => "eager",
        }
    }
}

impl FromStr for Mode {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fused" | "compiled" => Ok(Mode::Fused),
            "eager" => Ok(Mode::Eager),
            other => bail!(Device, "unknown mode '{other}' (fused, eager)"),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static PROCESS_MODE: Mutex<Option<Mode>> = Mutex::new(None);

/// The mode this process runs fusing backends in, once fixed.
pub fn process_mode() -> Option<Mode> {
    *PROCESS_MODE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fixes the process's fusion mode. Must happen before the first op on a fusing backend; asking
/// for the other mode later is an error rather than a silent mix.
pub fn set_mode(mode: Mode) -> Result<()> {
    let mut fixed = PROCESS_MODE.lock().unwrap_or_else(|e| e.into_inner());
    match *fixed {
        Some(m) if m == mode => Ok(()),
        Some(m) => bail!(Device, "this process already runs fusing backends {m}; {mode} needs a new process"),
        None => {
            if mode == Mode::Eager {
                for name in burn_cubecl::fusion::BUILTIN_NAMES {
                    burn_cubecl::fusion::remove(name).map_err(|e| {
                        err!(Device, "cannot switch to eager mode ({e:?}): fused ops already ran in this process")
                    })?;
                }
            }
            *fixed = Some(mode);
            Ok(())
        }
    }
}

/// Opens a device. For fusing backends this also fixes the process's mode (see [`set_mode`]).
pub fn open(backend: Backend, mode: Mode) -> Result<Device> {
    match backend {
        Backend::Flex => Ok(Device::flex()),
        Backend::Wgpu => {
            set_mode(mode)?;
            Ok(Device::wgpu(burn_tensor::DeviceKind::DefaultDevice))
        }
        Backend::Cuda => {
            set_mode(mode)?;
            #[cfg(feature = "cuda")]
            {
                Ok(Device::cuda(0))
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(err!(Device, "this build has no CUDA backend; rebuild with the `cuda` feature"))
            }
        }
    }
}

/// Counts kernel launches while installed (CubeCL backends only; flex launches none).
pub struct LaunchCounter {
    count: Arc<Counter>,
    _guard: LaunchObservation,
}

struct Counter(AtomicUsize);

impl LaunchObserver for Counter {
    fn launched(&self, _kernel: &'static str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl LaunchCounter {
    /// Starts counting. Sync the device before, so earlier work is not counted.
    pub fn start() -> Self {
        let count = Arc::new(Counter(AtomicUsize::new(0)));
        let guard = LaunchObservation::new(count.clone());
        Self { count, _guard: guard }
    }

    /// Launches so far. Sync the device first so queued fused work has been launched.
    pub fn count(&self) -> usize {
        self.count.0.load(Ordering::Relaxed)
    }
}

/// The adapter's name as the driver reports it (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" for Mesa's
/// software Vulkan), so benchmarks can say what they ran on. `None` for flex.
pub fn adapter_name(device: &Device) -> Option<String> {
    device.identity().map(|id| id.name)
}

/// Blocks until the device has run everything queued.
pub fn sync(device: &Device) -> Result<()> {
    device.sync().map_err(|e| err!(Backend, "device sync failed: {e:?}"))
}
