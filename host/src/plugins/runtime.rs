//! The sandbox: one wasmtime `Engine` (component model, epoch interruption,
//! pooling allocator when the address space allows), a fresh `Store` per
//! call with a memory cap and a deadline, and WASI linked deny-all: no
//! files, sockets, environment or arguments; clocks and random sealed to
//! the call ([`Seal`]).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{device, rollout};
use super::seal::Seal;

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of each pooled linear memory and table kept resident between
/// instances: a plugin call's stack, data and heap fit.
const KEEP_RESIDENT_MEMORY: usize = 1024 * 1024;
const KEEP_RESIDENT_TABLE: usize = 64 * 1024;

/// Bounds of one plugin call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory of the plugin instance.
    pub memory_bytes: usize,
    /// Wall-clock budget of a call (enforced through epochs).
    pub call_timeout: Duration,
    /// Budget of `validate-image`, which may read a whole image.
    pub image_timeout: Duration,
    /// Bytes a plugin may read from an image in one validation.
    pub image_read_bytes: u64,
    /// Captured stderr per call.
    pub stderr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            call_timeout: Duration::from_secs(2),
            image_timeout: Duration::from_secs(120),
            image_read_bytes: 1024 * 1024 * 1024,
            stderr_bytes: 16 * 1024,
        }
    }
}

/// Bytes of an image, readable in pieces (the firmware store behind it).
pub trait ImageSource: Send + Sync {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, String>;
}

/// What the `image` resource refers to in the store's table.
pub struct ImageHandle {
    source: Arc<dyn ImageSource>,
}

/// Per-call state of a store.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
    read_budget: u64,
    log_lines: u32,
    /// The call's logical time in nanoseconds, what the sealed monotonic
    /// clock answers.
    now_ns: u64,
}

/// `wasi:clocks/monotonic-clock`, sealed: it stands at the call's logical
/// time, and a wait on it (`subscribe-duration`, `subscribe-instant`, a
/// sleep) is over at once. wasmtime-wasi's own waits for real, with the
/// host's timer, and outside the epoch deadline (the host is not running
/// WebAssembly while a guest blocks on a pollable): a plugin could time
/// itself with it, or hold a thread for as long as it liked.
impl monotonic_clock::Host for State {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(self.now_ns)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1_000_000)
    }

    fn subscribe_instant(
        &mut self,
        _when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.elapsed()
    }

    fn subscribe_duration(
        &mut self,
        _duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.elapsed()
    }
}

impl State {
    /// A pollable that is ready at once.
    fn elapsed(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let elapsed = self.table.push(Elapsed)?;
        wasmtime_wasi::p2::subscribe(&mut self.table, elapsed)
    }
}

/// A wait that is over.
struct Elapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for Elapsed {
    async fn ready(&mut self) {}
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

const MAX_LOG_LINES: u32 = 100;
const MAX_LOG_LINE: usize = 2048;

fn log_line(state: &mut State, level: &str, message: String) {
    state.log_lines += 1;
    if state.log_lines > MAX_LOG_LINES {
        return;
    }
    let mut message = message;
    if message.len() > MAX_LOG_LINE {
        let mut cut = MAX_LOG_LINE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    let plugin = &*state.plugin;
    match level {
        "error" => tracing::error!(plugin, "{message}"),
        "warn" => tracing::warn!(plugin, "{message}"),
        "info" => tracing::info!(plugin, "{message}"),
        _ => tracing::debug!(plugin, "{message}"),
    }
}

impl rollout::rollway::plugin::log::Host for State {
    fn write(&mut self, level: rollout::rollway::plugin::types::LogLevel, message: String) {
        use rollout::rollway::plugin::types::LogLevel as L;
        let level = match level {
            L::Error => "error",
            L::Warn => "warn",
            L::Info => "info",
            L::Debug | L::Trace => "debug",
        };
        log_line(self, level, message);
    }
}
impl rollout::rollway::plugin::types::Host for State {}

impl device::rollway::plugin::image::Host for State {}

impl device::rollway::plugin::image::HostImage for State {
    fn size(&mut self, image: Resource<ImageHandle>) -> u64 {
        self.table.get(&image).map(|h| h.source.size()).unwrap_or(0)
    }

    fn read(
        &mut self,
        image: Resource<ImageHandle>,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, String> {
        let len = len.min(1024 * 1024);
        if u64::from(len) > self.read_budget {
            return Err("image read budget exhausted".into());
        }
        self.read_budget -= u64::from(len);
        let handle = self.table.get(&image).map_err(|e| e.to_string())?;
        handle.source.read(offset, len)
    }

    fn drop(&mut self, image: Resource<ImageHandle>) -> wasmtime::Result<()> {
        self.table.delete(image)?;
        Ok(())
    }
}

/// The process-wide engine and linkers. Compiled components belong to an
/// engine, so one engine serves every plugin of the process.
pub struct Runtime {
    engine: Engine,
    rollout_linker: Linker<State>,
    device_linker: Linker<State>,
    /// The compiled components kept on disk, when a directory was given.
    cache: Option<Cache>,
}

static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Keeps compiled components in `dir` across starts (wasmtime's cache,
/// keyed by the component's bytes, the engine's settings and wasmtime's
/// version), so that a restart does not compile them again. Takes effect
/// if called before the runtime's first use; the first directory given
/// serves the whole process.
pub fn cache_compiled_in(dir: PathBuf) {
    let _ = CACHE_DIR.set(dir);
}

/// Compilations of the process so far: (from the disk cache, compiled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompileCounts {
    pub cached: usize,
    pub compiled: usize,
}

impl Runtime {
    /// The shared runtime, created on first use with its epoch ticker.
    pub fn shared() -> anyhow::Result<Arc<Runtime>> {
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime.clone());
        }
        let runtime = Arc::new(Self::new()?);
        let runtime = RUNTIME.get_or_init(|| runtime).clone();
        Ok(runtime)
    }

    fn new() -> anyhow::Result<Self> {
        let cache = CACHE_DIR.get().and_then(|dir| {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            let mut config = CacheConfig::new();
            config.with_directory(&dir);
            match Cache::new(config) {
                Ok(cache) => Some(cache),
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"), dir = %dir.display(),
                        "the plugin compile cache is unavailable; plugins are compiled at every start"
                    );
                    None
                }
            }
        });
        let engine = Self::build_engine(true, cache.as_ref()).or_else(|error| {
            tracing::warn!(
                error = format!("{error:#}"),
                "pooling allocator unavailable; using on-demand allocation"
            );
            Self::build_engine(false, cache.as_ref())
        })?;
        let mut rollout_linker = Linker::new(&engine);
        link_wasi(&mut rollout_linker)?;
        rollout::RolloutStrategy::add_to_linker::<State, HasSelf<State>>(
            &mut rollout_linker,
            |s| s,
        )
        .map_err(|e| wasm_error(e, "linking the rollout world"))?;
        let mut device_linker = Linker::new(&engine);
        link_wasi(&mut device_linker)?;
        device::DeviceProtocol::add_to_linker::<State, HasSelf<State>>(&mut device_linker, |s| s)
            .map_err(|e| wasm_error(e, "linking the device world"))?;
        start_ticker(engine.clone());
        Ok(Self {
            engine,
            rollout_linker,
            device_linker,
            cache,
        })
    }

    /// How many components came from the disk cache and how many were
    /// compiled; all compiled when there is no cache.
    pub fn compile_counts(&self) -> Option<CompileCounts> {
        self.cache.as_ref().map(|cache| CompileCounts {
            cached: cache.cache_hits(),
            compiled: cache.cache_misses(),
        })
    }

    fn build_engine(pooling: bool, cache: Option<&Cache>) -> anyhow::Result<Engine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cache(cache.cloned());
        if pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(256)
                .total_core_instances(512)
                .total_memories(512)
                .total_tables(512)
                .max_memory_size(Limits::default().memory_bytes)
                // A call's instance is torn down right after it. Resetting
                // its memory with `madvise` made every call pay page faults
                // and TLB-flush interrupts (most of a 23 µs call, by
                // `perf`); instead the pages a call dirtied are found with
                // PAGEMAP_SCAN (Linux 6.7+, else the low addresses are
                // reset) and restored in place, and stay resident.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
                .table_keep_resident(KEEP_RESIDENT_TABLE);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine =
            Engine::new(&config).map_err(|e| wasm_error(e, "configuring the plugin engine"))?;
        if pooling {
            // Fail over to on-demand now rather than at the first call.
            // The smallest component there is: magic, version 0x0d, layer 1.
            const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";
            let probe = Component::new(&engine, EMPTY_COMPONENT)
                .map_err(|e| wasm_error(e, "probing the pooling allocator"))?;
            let linker: Linker<()> = Linker::new(&engine);
            let mut store = Store::new(&engine, ());
            store.set_epoch_deadline(1000);
            linker
                .instantiate(&mut store, &probe)
                .map_err(|e| wasm_error(e, "probing the pooling allocator"))?;
        }
        Ok(engine)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn rollout_linker(&self) -> &Linker<State> {
        &self.rollout_linker
    }

    pub fn device_linker(&self) -> &Linker<State> {
        &self.device_linker
    }

    /// A fresh store for one call of `plugin`, with its memory cap, a
    /// deadline of `timeout` and the call's `seal`; returns the captured
    /// stderr pipe too.
    pub fn store(
        &self,
        plugin: &Arc<str>,
        limits: &Limits,
        timeout: Duration,
        seal: &Seal,
    ) -> (Store<State>, MemoryOutputPipe) {
        let stderr = MemoryOutputPipe::new(limits.stderr_bytes);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        seal.apply(&mut wasi);
        let wasi = wasi.build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(16)
                .tables(16)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            plugin: plugin.clone(),
            read_budget: limits.image_read_bytes,
            log_lines: 0,
            now_ns: seal.now_ms().saturating_mul(1_000_000),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        (store, stderr)
    }

    /// Puts an image into the store's table for a `validate-image` call.
    pub fn push_image(
        store: &mut Store<State>,
        source: Arc<dyn ImageSource>,
    ) -> wasmtime::Result<Resource<ImageHandle>> {
        Ok(store.data_mut().table.push(ImageHandle { source })?)
    }
}

/// WASI 0.2 as plugins get it: wasmtime-wasi's, with the monotonic clock
/// replaced by the sealed one of [`State`].
fn link_wasi(linker: &mut Linker<State>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker).map_err(|e| wasm_error(e, "linking WASI"))?;
    linker.allow_shadowing(true);
    let sealed = monotonic_clock::add_to_linker::<State, HasSelf<State>>(linker, |s| s)
        .map_err(|e| wasm_error(e, "linking the sealed monotonic clock"));
    linker.allow_shadowing(false);
    sealed
}

/// Advances the engine's epoch every tick, on its own thread.
fn start_ticker(engine: Engine) {
    let spawned = std::thread::Builder::new()
        .name("rollway-plugin-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "starting the plugin epoch ticker; plugin calls will time out at once");
    }
}

/// wasmtime has its own error type; this carries it into `anyhow` with context.
fn wasm_error(error: wasmtime::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {error:#}")
}
