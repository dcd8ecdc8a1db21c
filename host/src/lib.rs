//! Rollway, an over-the-air firmware update server for vehicle fleets.
//!
//! An update flows: `api` (operators create firmware, devices and jobs) →
//! `jobs` (executions planned by a rollout plugin) → `scheduler` (starts
//! jobs, asks the rollout strategy, times out silent devices) → `dispatch`
//! (commands with signed `manifest`s over `mqtt`) → device → `ingest`
//! (statuses, `decide`d and written by `jobs::executions`) → `outbox` →
//! `relay` (Kafka) and `live` (stream clients). `plugins` is the Wasm
//! sandbox; `startup` wires a host together. See ARCHITECTURE.md for the
//! map.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod db;
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod failover;
pub mod firmware;
pub mod fleet;
pub mod ingest;
pub mod jobs;
pub mod kafka;
pub mod live;
pub mod manifest;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod plugins;
pub mod relay;
pub mod replicas;
pub mod retention;
pub mod scheduler;
pub mod settings;
pub mod signing;
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod up;
pub mod worker;

pub use settings::Settings;
pub use startup::Application;
