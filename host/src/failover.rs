//! Failover between replicas (the table is `replicas.rs`).
//!
//! Each replica writes a heartbeat to `replicas` every second. Statuses reach
//! the replicas through one MQTT shared subscription, and every replica's
//! MQTT session is persistent and named after its instance id, so a replica
//! that restarts resumes the statuses the broker queued for it meanwhile.
//! A broker keeps routing a share of the subscription to a replica that went
//! away for good, so a live replica adopts the session of one whose
//! heartbeat is older than `ROLLWAY_REPLICA_TIMEOUT`: it connects with that
//! replica's client id, applies its queued statuses and keeps serving its
//! share until the replica comes back, then hands the session back.
//!
//! Adoption is claimed in the database (`adopted_by`), so one replica adopts
//! a session at a time; a silent adopter's adoptions are claimed in turn.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::mqtt;
use crate::replicas::client_id;

const HEARTBEAT: Duration = Duration::from_secs(1);

/// What adopting a session needs: the broker and the status pipeline.
pub struct Adopter {
    pub mqtt_url: SecretString,
    pub mqtt_ca: Option<Vec<u8>>,
    pub subscriptions: Vec<String>,
    pub ingest: Ingest,
}

pub struct Replicas {
    pub pool: PgPool,
    pub instance_id: String,
    pub timeout: Duration,
    pub metrics: Metrics,
    /// `None` when statuses do not come from MQTT (a Kafka consumer group
    /// rebalances by itself).
    pub adopter: Option<Adopter>,
}

impl Replicas {
    /// `pool` may be the host's; heartbeats get a small pool of their own
    /// on the same database, so that a busy host is not taken for a dead
    /// one while its main pool is exhausted.
    pub fn new(pool: &PgPool, instance_id: String, timeout: Duration, metrics: Metrics) -> Self {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(timeout / 2)
            .connect_lazy_with((*pool.connect_options()).clone());
        Self {
            pool,
            instance_id,
            timeout,
            metrics,
            adopter: None,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut adopted: HashMap<String, CancellationToken> = HashMap::new();
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = self.round(&mut adopted, &shutdown).await {
                tracing::error!(error = format!("{error:#}"), "replica heartbeat");
            }
        }
        // Hand the adopted sessions back for another replica to take.
        for (peer, token) in adopted.drain() {
            token.cancel();
            let _ = self.release(&peer).await;
        }
    }

    async fn round(
        &self,
        adopted: &mut HashMap<String, CancellationToken>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO replicas (instance_id, version) VALUES ($1, $2)
             ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(&self.instance_id)
        .bind(env!("CARGO_PKG_VERSION"))
        .execute(&self.pool)
        .await?;
        let Some(adopter) = &self.adopter else {
            return Ok(());
        };
        let timeout = self.timeout.as_secs_f64();
        // Hand back the sessions of replicas that came back.
        let back: Vec<String> = sqlx::query_scalar(
            "SELECT instance_id FROM replicas
             WHERE instance_id = ANY($1)
               AND (heartbeat_at >= now() - make_interval(secs => $2) OR adopted_by IS DISTINCT FROM $3)",
        )
        .bind(adopted.keys().cloned().collect::<Vec<_>>())
        .bind(timeout)
        .bind(&self.instance_id)
        .fetch_all(&self.pool)
        .await?;
        for peer in back {
            if let Some(token) = adopted.remove(&peer) {
                token.cancel();
                self.release(&peer).await?;
                tracing::info!(peer, "replica is back; its MQTT session is handed back");
            }
        }
        // Adopt the sessions of silent replicas nobody live serves.
        let silent: Vec<String> = sqlx::query_scalar(
            "UPDATE replicas r
             SET adopted_at = CASE WHEN r.adopted_by = $1 THEN r.adopted_at ELSE now() END,
                 adopted_by = $1
             WHERE r.instance_id <> $1
               AND r.heartbeat_at < now() - make_interval(secs => $2)
               AND (r.adopted_by IS NULL OR r.adopted_by = $1 OR NOT EXISTS (
                    SELECT 1 FROM replicas a WHERE a.instance_id = r.adopted_by
                      AND a.heartbeat_at >= now() - make_interval(secs => $2)))
             RETURNING r.instance_id",
        )
        .bind(&self.instance_id)
        .bind(timeout)
        .fetch_all(&self.pool)
        .await?;
        for peer in silent {
            if adopted.contains_key(&peer) {
                continue;
            }
            let token = shutdown.child_token();
            self.adopt(adopter, &peer, token.clone())?;
            crate::dispatch::resend_orphans(&self.pool, &peer).await?;
            adopted.insert(peer.clone(), token);
            tracing::warn!(peer, "replica is silent; adopting its MQTT session");
        }
        self.metrics.mqtt_sessions_adopted.set(adopted.len() as i64);
        Ok(())
    }

    /// Connects as `peer` and applies the statuses its session receives.
    fn adopt(&self, adopter: &Adopter, peer: &str, token: CancellationToken) -> anyhow::Result<()> {
        let options = mqtt::options(
            adopter.mqtt_url.expose_secret(),
            &client_id(peer),
            adopter.mqtt_ca.as_deref(),
        )?;
        let (tx, rx) = mpsc::channel(10_000);
        let link = mqtt::spawn(
            options,
            adopter.subscriptions.clone(),
            Some(tx),
            self.metrics.clone(),
            // Not this replica's own link: not part of its readiness.
            mqtt::LinkState::not_configured(),
            None,
            token.clone(),
        );
        tokio::spawn(adopter.ingest.clone().run_mqtt(rx, link, token));
        Ok(())
    }

    async fn release(&self, peer: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE replicas SET adopted_by = NULL, adopted_at = NULL
             WHERE instance_id = $1 AND adopted_by = $2",
        )
        .bind(peer)
        .bind(&self.instance_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
