//! What a plugin sees of time and chance. A plugin is sealed and
//! deterministic: the same call with the same inputs answers the same on
//! every replica, in `rollway plugin check` and in the benchmarks. So the
//! WASI clocks of a call answer its logical time (the snapshot's `now` for
//! `evaluate`, the Unix epoch for calls without a time) and never move
//! during the call, and WASI's random interfaces answer a stream seeded
//! from the call's function, its logical time and its inputs.
//!
//! The stream is reproducible by design, hence never secret: a plugin
//! must not make keys or nonces from it (docs/PLUGINS.md says so).

use std::convert::Infallible;
use std::time::Duration;

use rand_core::TryRng;
use sha2::{Digest, Sha256};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use super::{CancelRequest, CommandRequest, Snapshot};

/// The logical time and the seed of one plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// Milliseconds since the Unix epoch the call's clocks answer.
    now_ms: u64,
    seed: [u8; 32],
}

/// An input of a plugin call, as it feeds the call's seed.
pub trait Sealed {
    fn feed(&self, to: &mut Feed);
}

/// The digest a call's inputs are fed into. Every piece is length
/// prefixed, so that ("ab", "c") and ("a", "bc") differ.
pub struct Feed(Sha256);

impl Feed {
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub fn number(&mut self, n: u64) {
        self.0.update(n.to_le_bytes());
    }
}

impl Seal {
    /// The seal of a call of `function` at `now_ms` (0 for calls without
    /// a time) with `inputs`.
    pub fn new(function: &str, now_ms: u64, inputs: &[&dyn Sealed]) -> Self {
        let mut feed = Feed(Sha256::new());
        feed.bytes(function.as_bytes());
        feed.number(now_ms);
        for input in inputs {
            input.feed(&mut feed);
        }
        Self {
            now_ms,
            seed: feed.0.finalize().into(),
        }
    }

    /// The call's time, for the clocks.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Sets the WASI clocks and random generators of a call's context.
    pub fn apply(&self, builder: &mut WasiCtxBuilder) {
        let since_epoch = Duration::from_millis(self.now_ms);
        let mut insecure_seed = [0u8; 16];
        insecure_seed.copy_from_slice(&Stream::new(self.seed, b"insecure-seed").block()[..16]);
        builder
            .wall_clock(LogicalClock(since_epoch))
            .monotonic_clock(LogicalClock(since_epoch))
            .secure_random(Stream::new(self.seed, b"random"))
            .insecure_random(Stream::new(self.seed, b"insecure"))
            .insecure_random_seed(u128::from_le_bytes(insecure_seed));
    }
}

/// A clock stopped at the call's logical time.
struct LogicalClock(Duration);

impl HostWallClock for LogicalClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        self.0
    }
}

impl HostMonotonicClock for LogicalClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// SHA-256 in counter mode over the call's seed and the interface's
/// name: reproducible, well mixed, and computed only as far as read.
struct Stream {
    seed: [u8; 32],
    domain: &'static [u8],
    counter: u64,
    buffer: [u8; 32],
    used: usize,
}

impl Stream {
    fn new(seed: [u8; 32], domain: &'static [u8]) -> Self {
        Self {
            seed,
            domain,
            counter: 0,
            buffer: [0; 32],
            used: 32,
        }
    }

    fn block(&mut self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.seed);
        digest.update(self.domain);
        digest.update(self.counter.to_le_bytes());
        self.counter += 1;
        digest.finalize().into()
    }
}

impl TryRng for Stream {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst {
            if self.used == self.buffer.len() {
                self.buffer = self.block();
                self.used = 0;
            }
            *byte = self.buffer[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl Sealed for str {
    fn feed(&self, to: &mut Feed) {
        to.bytes(self.as_bytes());
    }
}

impl Sealed for [u8] {
    fn feed(&self, to: &mut Feed) {
        to.bytes(self);
    }
}

impl Sealed for u64 {
    fn feed(&self, to: &mut Feed) {
        to.number(*self);
    }
}

impl<T: Sealed + ?Sized> Sealed for &T {
    fn feed(&self, to: &mut Feed) {
        (**self).feed(to);
    }
}

impl<A: Sealed + ?Sized, B: Sealed + ?Sized> Sealed for (&A, &B) {
    fn feed(&self, to: &mut Feed) {
        self.0.feed(to);
        self.1.feed(to);
    }
}

impl<T: Sealed> Sealed for [T] {
    fn feed(&self, to: &mut Feed) {
        to.number(self.len() as u64);
        for item in self {
            item.feed(to);
        }
    }
}

/// A snapshot is small and rare (one per evaluation): all of it.
impl Sealed for Snapshot {
    fn feed(&self, to: &mut Feed) {
        to.bytes(format!("{self:?}").as_bytes());
    }
}

/// A command request is known by what it asks for: the execution and
/// attempt, the device and the firmware (the signed manifest follows
/// from them).
impl Sealed for CommandRequest {
    fn feed(&self, to: &mut Feed) {
        to.bytes(self.job_id.as_bytes());
        to.number(self.execution_id);
        to.number(u64::from(self.attempt));
        to.bytes(self.device.id.as_bytes());
        to.bytes(self.firmware.id.as_bytes());
    }
}

impl Sealed for CancelRequest {
    fn feed(&self, to: &mut Feed) {
        to.bytes(self.job_id.as_bytes());
        to.number(self.execution_id);
        to.number(u64::from(self.attempt));
        to.bytes(self.device.id.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng as _;

    #[test]
    fn the_seed_follows_every_input_and_only_them() {
        let a = Seal::new("plan", 0, &[&"{}", &7u64]);
        assert_eq!(a, Seal::new("plan", 0, &[&"{}", &7u64]));
        assert_ne!(a, Seal::new("plan", 0, &[&"{}", &8u64]));
        assert_ne!(a, Seal::new("plan", 1, &[&"{}", &7u64]));
        assert_ne!(a, Seal::new("evaluate", 0, &[&"{}", &7u64]));
        // Pieces are framed: moving a byte across a boundary changes the seed.
        let ab_c = Seal::new("f", 0, &[&"ab", &"c"]);
        assert_ne!(ab_c, Seal::new("f", 0, &[&"a", &"bc"]));
    }

    #[test]
    fn a_stream_is_the_same_however_it_is_read() {
        let seal = Seal::new("f", 0, &[&"x"]);
        let mut whole = [0u8; 100];
        Stream::new(seal.seed, b"random").fill_bytes(&mut whole);
        let mut pieces = Stream::new(seal.seed, b"random");
        let mut read = Vec::new();
        for n in [1usize, 7, 32, 60] {
            let mut part = vec![0u8; n];
            pieces.fill_bytes(&mut part);
            read.extend(part);
        }
        assert_eq!(&whole[..], &read[..]);
        let mut insecure = [0u8; 100];
        Stream::new(seal.seed, b"insecure").fill_bytes(&mut insecure);
        assert_ne!(whole, insecure, "each interface has its own stream");
    }
}
