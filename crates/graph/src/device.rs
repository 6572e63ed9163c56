//! Backend selection at run time, the fused/eager switch, and kernel-launch counting.
//!
//! "Fused" is Burn's fusion backend over CubeCL (wgpu or CUDA) — Kiln's compiled mode. "Eager" is
//! the same backend with every fuser removed, so each op is its own kernel. The fuser registry is
//! process-global and sealed by the first op, so the mode is chosen once per process.

use std::collections::HashMap;
use std::path::PathBuf;
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
        Backend::Flex => {
            keep_freed_memory();
            pin_cpu_workers();
            Ok(Device::flex())
        }
        Backend::Wgpu => {
            set_mode(mode)?;
            keep_tuning_in_kiln_cache();
            Ok(Device::wgpu(burn_tensor::DeviceKind::DefaultDevice))
        }
        Backend::Cuda => {
            set_mode(mode)?;
            keep_tuning_in_kiln_cache();
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

/// Kiln's cache directory: `$KILN_CACHE`, else `~/.cache/kiln`.
pub fn cache_dir() -> PathBuf {
    match (std::env::var_os("KILN_CACHE"), std::env::var_os("HOME")) {
        (Some(c), _) => PathBuf::from(c),
        (None, Some(home)) => PathBuf::from(home).join(".cache/kiln"),
        (None, None) => std::env::temp_dir().join("kiln"),
    }
}

/// Where CubeCL keeps its autotune results and compiled kernels between processes: `cubecl/` in
/// Kiln's cache. CubeCL's own default is the `target/` of the outermost Cargo workspace above the
/// working directory, so the CLI, the tests and the benchmarks would each tune again depending on
/// where they run. A `cubecl.toml` (or `burn.toml`) that names another place wins. Once per process,
/// before the first CubeCL device.
fn keep_tuning_in_kiln_cache() {
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if matches!(config.environment.path, CacheConfig::Target) {
            config.environment.path = CacheConfig::Directory(cache_dir().join("cubecl"));
        }
        // False when CubeCL's configuration was already read: it then keeps what it has.
        CubeClRuntimeConfig::try_set(config);
    });
}

/// Makes glibc keep freed memory for reuse. By default it hands buffers above 32 MiB, and the top
/// of its heap, back to the OS, so every CPU forward page-faults its large activations in afresh
/// (a 256-channel map at 256×256 is 67 MB): db_mobilenet_v3_large at 1024×1024 ran in 430 ms
/// instead of 310 ms, a concatenation of such maps 27 ms instead of 4. The process keeps its peak
/// memory instead, as ONNX Runtime's arena does. Once per process; `KILN_MALLOC=system` opts out.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var("KILN_MALLOC").is_ok_and(|v| v == "system") {
                return;
            }
            // SAFETY: mallopt only changes glibc's allocation thresholds.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            };
            if !ok {
                tracing::warn!("glibc refused Kiln's allocation thresholds; large buffers go back to the OS");
            }
        });
    }
}

/// Pins rayon's workers, one to each CPU the process may use, as ONNX Runtime pins its intra-op
/// threads. Unpinned, a scheduler that packs threads onto few CPUs once the machine has idled (the
/// Firecracker guests Kiln is benchmarked on do: `sched_vcpu_pack`) ran whole forwards on one core:
/// the page classifier took 10.6 ms after a 50 ms pause against 6.5 ms pinned, with 890 preemptions
/// per forward against 60. Only when Kiln is first to build rayon's global pool (a pool the
/// application built stays as it is) and the pool has a worker per CPU (with fewer, pinning would
/// put every process's workers on the same first CPUs); `KILN_PIN_THREADS=0` opts out. Runs at the
/// first [`crate::Graph::load`] and CPU device; an application that uses rayon earlier calls it
/// first. True when this call or an earlier one pinned the workers.
pub fn pin_cpu_workers() -> bool {
    static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            if std::env::var("KILN_PIN_THREADS").is_ok_and(|v| v == "0") {
                return false;
            }
            // Rayon's own default: `RAYON_NUM_THREADS`, else the parallelism the OS grants (which
            // a cgroup's CPU quota can hold below the CPUs the process may run on).
            let cpus = allowed_cpus();
            let workers = std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&t: &usize| t > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if cpus.len() < 2 || workers != cpus.len() {
                return false;
            }
            let built = rayon::ThreadPoolBuilder::new()
                .num_threads(cpus.len())
                .start_handler(move |worker| {
                    // SAFETY: the set is a plain bit mask sized as the call is told.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpus[worker], &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                    }
                })
                .build_global();
            if built.is_err() {
                tracing::debug!("rayon's global pool was built before Kiln's first graph or CPU device; its workers stay unpinned");
            }
            built.is_ok()
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        false
    })
}

/// The CPUs this process may run on, in order.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: the set is a plain bit mask sized as the call is told.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![];
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// Counts kernel launches while installed (CubeCL backends only; flex launches none).
pub struct LaunchCounter {
    count: Arc<Counter>,
    _guard: LaunchObservation,
}

#[derive(Default)]
struct Counter {
    total: AtomicUsize,
    by_kernel: Mutex<HashMap<&'static str, usize>>,
}

impl LaunchObserver for Counter {
    fn launched(&self, kernel: &'static str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.by_kernel.lock().unwrap_or_else(|e| e.into_inner()).entry(kernel).or_default() += 1;
    }
}

impl LaunchCounter {
    /// Starts counting. Sync the device before, so earlier work is not counted.
    pub fn start() -> Self {
        let count = Arc::new(Counter::default());
        let guard = LaunchObservation::new(count.clone());
        Self { count, _guard: guard }
    }

    /// Launches so far. Sync the device first so queued fused work has been launched.
    pub fn count(&self) -> usize {
        self.count.total.load(Ordering::Relaxed)
    }

    /// Launches so far per kernel name, most launched first: which ops fusion left alone.
    pub fn by_kernel(&self) -> Vec<(&'static str, usize)> {
        let map = self.count.by_kernel.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
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
