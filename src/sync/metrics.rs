//! The sync engine's metrics, registered in whatever registry its owner
//! keeps (a replica's, or a private one in a client). Per-peer series are
//! labelled by the peer's node identity (its address until it says who it
//! is) and removed when a peer leaves, so the set stays bounded.

use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct SyncMetrics {
    /// Entry data held in memory by pulls right now.
    pub pull_inflight_bytes: IntGauge,
    entries: IntCounterVec,
    pushed: IntCounterVec,
    bytes: IntCounterVec,
    lag_entries: IntGaugeVec,
    lag_seconds: GaugeVec,
    last_success: GaugeVec,
    errors: IntCounterVec,
    sessions: IntCounterVec,
    cursor_resets: IntCounterVec,
    connected: IntGaugeVec,
    reconciles: IntCounterVec,
    reconcile_rounds: IntCounterVec,
    reconcile_bytes: IntCounterVec,
    reconcile_pulled: IntCounterVec,
    reconcile_pushed: IntCounterVec,
    last_reconcile: GaugeVec,
}

/// Error kinds, the `kind` label of `peer_errors_total`.
pub const ERROR_KINDS: [&str; 8] = [
    "connect",
    "timeout",
    "cursor",
    "rpc",
    "data_loss",
    "store",
    "closed",
    "duplicate",
];

/// The metric children of one peer.
#[derive(Clone)]
pub struct PeerHandles {
    pub entries: IntCounter,
    /// Entries pushed to the peer and newly stored there.
    pub pushed: IntCounter,
    pub bytes: IntCounter,
    pub lag_entries: IntGauge,
    pub lag_seconds: Gauge,
    pub last_success: Gauge,
    pub sessions: IntCounter,
    pub cursor_resets: IntCounter,
    pub connected: IntGauge,
    pub reconciles: IntCounter,
    pub reconcile_rounds: IntCounter,
    pub reconcile_bytes: IntCounter,
    pub reconcile_pulled: IntCounter,
    pub reconcile_pushed: IntCounter,
    pub last_reconcile: Gauge,
    errors: IntCounterVec,
    peer: String,
}

impl PeerHandles {
    pub fn error(&self, kind: &str) {
        self.errors
            .with_label_values(&[self.peer.as_str(), kind])
            .inc();
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

impl SyncMetrics {
    pub fn new(registry: &Registry) -> Self {
        let ivec = |name: &str, help: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), &["peer"]).expect("valid"),
            )
        };
        let igauge = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["peer"]).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                GaugeVec::new(Opts::new(name, help), &["peer"]).expect("valid"),
            )
        };
        Self {
            pull_inflight_bytes: register(
                registry,
                IntGauge::new(
                    "pull_inflight_bytes",
                    "Entry data held in memory by pulls, within replication.max_inflight_mb",
                )
                .expect("valid"),
            ),
            pushed: ivec(
                "peer_entries_pushed_total",
                "Entries pushed to a peer and newly stored there",
            ),
            entries: ivec(
                "peer_entries_pulled_total",
                "Entries pulled from a peer and newly stored",
            ),
            bytes: ivec(
                "peer_bytes_pulled_total",
                "Bytes of entry data received from a peer",
            ),
            lag_entries: igauge(
                "peer_lag_entries",
                "Log records of a peer not yet applied here",
            ),
            lag_seconds: gauge(
                "peer_lag_seconds",
                "Seconds since this replica was last caught up with a peer",
            ),
            last_success: gauge(
                "peer_last_success_timestamp_seconds",
                "Unix time of the last batch applied from (or caught up with) a peer",
            ),
            errors: register(
                registry,
                IntCounterVec::new(
                    Opts::new("peer_errors_total", "Replication errors by peer and kind"),
                    &["peer", "kind"],
                )
                .expect("valid"),
            ),
            sessions: ivec(
                "peer_sessions_total",
                "Replication sessions started with a peer",
            ),
            cursor_resets: ivec(
                "peer_cursor_resets_total",
                "Times a peer's cursor was refused (peer restored or rebuilt) and pulling started over",
            ),
            connected: igauge(
                "peer_connected",
                "1 while a replication session with the peer is streaming",
            ),
            reconciles: ivec(
                "peer_reconcile_sessions_total",
                "Set reconciliations completed with a peer",
            ),
            reconcile_rounds: ivec(
                "peer_reconcile_rounds_total",
                "Round trips of set reconciliations with a peer",
            ),
            reconcile_bytes: ivec(
                "peer_reconcile_bytes_total",
                "Bytes of reconcile frames exchanged with a peer, both ways",
            ),
            reconcile_pulled: ivec(
                "peer_reconcile_pulled_total",
                "Entries a reconciliation found this replica lacked, and pulled from the peer",
            ),
            reconcile_pushed: ivec(
                "peer_reconcile_pushed_total",
                "Entries a reconciliation found the peer lacked, and pushed to it",
            ),
            last_reconcile: gauge(
                "peer_last_reconcile_timestamp_seconds",
                "Unix time of the last complete reconciliation with a peer",
            ),
        }
    }

    pub fn peer(&self, peer: &str) -> PeerHandles {
        for kind in ERROR_KINDS {
            self.errors.with_label_values(&[peer, kind]);
        }
        PeerHandles {
            entries: self.entries.with_label_values(&[peer]),
            pushed: self.pushed.with_label_values(&[peer]),
            bytes: self.bytes.with_label_values(&[peer]),
            lag_entries: self.lag_entries.with_label_values(&[peer]),
            lag_seconds: self.lag_seconds.with_label_values(&[peer]),
            last_success: self.last_success.with_label_values(&[peer]),
            sessions: self.sessions.with_label_values(&[peer]),
            cursor_resets: self.cursor_resets.with_label_values(&[peer]),
            connected: self.connected.with_label_values(&[peer]),
            reconciles: self.reconciles.with_label_values(&[peer]),
            reconcile_rounds: self.reconcile_rounds.with_label_values(&[peer]),
            reconcile_bytes: self.reconcile_bytes.with_label_values(&[peer]),
            reconcile_pulled: self.reconcile_pulled.with_label_values(&[peer]),
            reconcile_pushed: self.reconcile_pushed.with_label_values(&[peer]),
            last_reconcile: self.last_reconcile.with_label_values(&[peer]),
            errors: self.errors.clone(),
            peer: peer.to_owned(),
        }
    }

    /// Forgets a peer that left the topology.
    pub fn remove(&self, peer: &str) {
        let _ = self.entries.remove_label_values(&[peer]);
        let _ = self.pushed.remove_label_values(&[peer]);
        let _ = self.bytes.remove_label_values(&[peer]);
        let _ = self.lag_entries.remove_label_values(&[peer]);
        let _ = self.lag_seconds.remove_label_values(&[peer]);
        let _ = self.last_success.remove_label_values(&[peer]);
        let _ = self.sessions.remove_label_values(&[peer]);
        let _ = self.cursor_resets.remove_label_values(&[peer]);
        let _ = self.connected.remove_label_values(&[peer]);
        for v in [
            &self.reconciles,
            &self.reconcile_rounds,
            &self.reconcile_bytes,
            &self.reconcile_pulled,
            &self.reconcile_pushed,
        ] {
            let _ = v.remove_label_values(&[peer]);
        }
        let _ = self.last_reconcile.remove_label_values(&[peer]);
        for kind in ERROR_KINDS {
            let _ = self.errors.remove_label_values(&[peer, kind]);
        }
    }
}
