//! Rollway's black-box tests: each test starts the real host on a free port
//! against a fresh database on the real PostgreSQL (and the real S3 server
//! where it matters) and talks to it over HTTP as a client would.
//!
//! Run through `scripts/test.sh`, which starts the services and exports
//! their addresses.

mod admin;
mod away;
mod cancels;
mod cli;
mod dashboard;
mod devices;
mod end_time;
mod events;
mod faults;
mod firmware;
mod health;
mod helpers;
mod hostile;
mod images;
mod jobs;
mod live;
mod pipeline;
mod plugin_settings;
mod plugin_versions;
mod plugins;
mod presence;
mod procs;
mod relay;
mod security;
mod steer;
mod strategies;
mod truth;
mod up;
mod windows;
