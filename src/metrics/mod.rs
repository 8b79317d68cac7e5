//! Prometheus metrics: one registry per replica, every name prefixed with
//! `mindoo_replica_` and suffixed with its unit.
//!
//! gRPC calls are recorded by the tower layer in [`layer`]; ingest counters by
//! the replica core; store gauges are refreshed on every scrape.

pub mod layer;

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::entry::RejectReason;
use crate::store::StoreStats;
use crate::sync::metrics::SyncMetrics;

const PREFIX: &str = "mindoo_replica";

pub struct Metrics {
    registry: Registry,
    pub entries_stored: IntCounter,
    pub entries_duplicate: IntCounter,
    entries_rejected: IntCounterVec,
    pub entry_bytes_received: IntCounter,
    pub entry_bytes_sent: IntCounter,
    pub(crate) grpc_requests: IntCounterVec,
    pub(crate) grpc_duration: HistogramVec,
    pub(crate) grpc_in_flight: IntGaugeVec,
    store_entries: IntGauge,
    store_head_seq: IntGauge,
    store_disk_bytes: IntGauge,
    store_log_records_read: IntCounter,
    store_memory_bytes: IntGaugeVec,
    /// 1 while the store takes writes, 0 while it refuses them.
    pub store_writable: IntGauge,
    /// Writes the store refused (appends and probes).
    pub store_write_errors: IntCounter,
    /// How long each commit waited for its fsync (shared with the commits
    /// waiting beside it).
    pub store_sync_wait: prometheus::Histogram,
    store_syncs: IntCounter,
    /// Batches that asked for more than one replica, by whether enough
    /// confirmed in time (met, timed_out).
    pub write_concern_batches: IntCounterVec,
    /// How long after a batch was durable here each peer confirmed holding
    /// it, by peer.
    pub peer_confirmation: HistogramVec,
    /// gRPC connections open now.
    pub connections_open: IntGauge,
    /// Connections closed for not starting HTTP/2 in time.
    pub handshake_timeouts: IntCounter,
    /// TLS handshakes that failed (no TLS, an unknown CA, a name that is
    /// no peer's).
    pub tls_handshake_failures: IntCounter,
    pub idle_closed: IntCounter,
    /// Connections closed for a frame or header block left unfinished.
    pub header_timeouts: IntCounter,
    /// Connections closed for not taking the response data they asked for.
    pub send_timeouts: IntCounter,
    /// Connections closed to make room at a cap.
    pub connections_evicted: IntCounter,
    /// New connections refused at a cap, by which cap.
    pub connections_refused: IntCounterVec,
    /// Replication cursors stored, counted at each clean-up pass.
    pub peer_cursors: IntGauge,
    /// Entry data granted to outgoing messages right now.
    pub send_data_held_bytes: IntGauge,
    /// Client calls refused at their identity's limits, by limit.
    pub client_calls_limited: IntCounterVec,
    /// Client identities whose limits are tracked now.
    pub clients_tracked: IntGauge,
    /// Client batches refused at a tenant's quota, by what (entries, bytes).
    pub quota_refusals: IntCounterVec,
    /// Entries and their bytes a scrub read back and checked.
    pub scrub_entries: IntCounter,
    pub scrub_bytes: IntCounter,
    /// Entries a scrub found not as stored and took out of service.
    pub scrub_corrupt: IntCounter,
    /// Whole passes done, and when the last one ended (unix seconds).
    pub scrub_passes: IntCounter,
    pub scrub_last_pass: IntGauge,
    /// The sync engine's, in this registry.
    pub sync: Arc<SyncMetrics>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(PREFIX.into()), None)
            .expect("static registry options are valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let entries_rejected = IntCounterVec::new(
            Opts::new(
                "entries_rejected_total",
                "Entries refused at ingest, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(entries_rejected.clone()))
            .expect("unique");
        for reason in RejectReason::ALL {
            entries_rejected.with_label_values(&[reason.as_str()]);
        }
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "grpc_requests_total",
                "Finished gRPC calls, by method, status code and kind of caller (peer, operator, \
                 client, refused, anonymous)",
            ),
            &["method", "code", "caller"],
        )
        .expect("valid metric");
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "grpc_request_duration_seconds",
                "gRPC call duration until the last response byte, by method and status code",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                60.0,
            ]),
            &["method", "code"],
        )
        .expect("valid metric");
        let grpc_in_flight = IntGaugeVec::new(
            Opts::new("grpc_requests_in_flight", "gRPC calls in progress"),
            &["method"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "New connections closed at once because a cap was reached and no connection \
                 in reach was idle, by cap (per_address, max_connections)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in [
            crate::connections::Refusal::PerAddress,
            crate::connections::Refusal::MaxConnections,
        ] {
            connections_refused.with_label_values(&[reason.label()]);
        }
        let client_calls_limited = IntCounterVec::new(
            Opts::new(
                "client_calls_limited_total",
                "Client calls refused with RESOURCE_EXHAUSTED at their identity's limits, by \
                 limit (rate: limits.client_requests_per_second, calls: \
                 limits.max_calls_per_client)",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for limit in crate::fair::Limited::ALL {
            client_calls_limited.with_label_values(&[limit.label()]);
        }
        let quota_refusals = IntCounterVec::new(
            Opts::new(
                "quota_refused_batches_total",
                "Client batches refused with RESOURCE_EXHAUSTED because they would take a \
                 tenant past its quota, by what (entries, bytes)",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for what in ["entries", "bytes"] {
            quota_refusals.with_label_values(&[what]);
        }
        let store_memory_bytes = IntGaugeVec::new(
            Opts::new(
                "store_memory_bytes",
                "Memory the store engine reports using, by part (memtables, table readers, \
                 block cache, pinned blocks)",
            ),
            &["part"],
        )
        .expect("valid metric");
        for m in [
            Box::new(store_memory_bytes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(grpc_requests.clone()),
            Box::new(grpc_duration.clone()),
            Box::new(grpc_in_flight.clone()),
            Box::new(connections_refused.clone()),
            Box::new(client_calls_limited.clone()),
            Box::new(quota_refusals.clone()),
        ] {
            registry.register(m).expect("unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique");
        Self {
            entries_stored: counter("entries_stored_total", "Entries newly stored"),
            entries_duplicate: counter(
                "entries_duplicate_total",
                "Entries received that were already stored",
            ),
            entries_rejected,
            entry_bytes_received: counter(
                "entry_bytes_received_total",
                "Bytes of entry data received through the store API",
            ),
            entry_bytes_sent: counter(
                "entry_bytes_sent_total",
                "Bytes of entry data sent through the store API",
            ),
            grpc_requests,
            grpc_duration,
            grpc_in_flight,
            store_entries: gauge("store_entries", "Entries held"),
            store_head_seq: gauge("store_head_seq", "Sequence number of the newest log record"),
            store_disk_bytes: gauge(
                "store_disk_bytes",
                "Approximate size of the database (SST files and memtables)",
            ),
            store_log_records_read: counter(
                "store_log_records_read_total",
                "Log records the store read to answer log reads (ScanSince, Watch, pulls); a \
                 read filtered by namespace reads only its namespaces' records",
            ),
            store_memory_bytes,
            store_writable: {
                let g = gauge(
                    "store_writable",
                    "1 while the store takes writes, 0 while it refuses them (Store health is \
                     NOT_SERVING then)",
                );
                g.set(1);
                g
            },
            store_write_errors: counter(
                "store_write_errors_total",
                "Writes the store refused, including the probes made while it refuses them",
            ),
            store_sync_wait: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "store_sync_wait_seconds",
                        "How long a commit waited until it was durable (its share of a group \
                         fsync); none observed with storage.sync_writes off",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ]),
                )
                .expect("valid metric");
                registry.register(Box::new(h.clone())).expect("unique");
                h
            },
            write_concern_batches: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "write_concern_batches_total",
                        "Client batches that asked for more than one replica (min_replicas), by \
                         whether enough peers confirmed in time (met, timed_out)",
                    ),
                    &["result"],
                )
                .expect("valid metric");
                for result in ["met", "timed_out"] {
                    c.with_label_values(&[result]);
                }
                registry.register(Box::new(c.clone())).expect("unique");
                c
            },
            peer_confirmation: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "peer_confirmation_seconds",
                        "How long after a batch that asked for more replicas was durable here \
                         each peer confirmed holding it, by peer",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ]),
                    &["peer"],
                )
                .expect("valid metric");
                registry.register(Box::new(h.clone())).expect("unique");
                h
            },
            scrub_entries: counter(
                "scrub_entries_total",
                "Stored entries a scrub read back and checked",
            ),
            scrub_bytes: counter("scrub_bytes_total", "Entry bytes a scrub read back"),
            scrub_corrupt: counter(
                "scrub_corrupt_entries_total",
                "Entries a scrub found not as stored (bytes that no longer hash to their id, \
                 a body or index row missing) and took out of service; good copies come back \
                 from peers",
            ),
            scrub_passes: counter("scrub_passes_total", "Whole scrub passes done"),
            scrub_last_pass: gauge(
                "scrub_last_pass_timestamp_seconds",
                "When the last whole scrub pass ended (unix seconds; 0: none since start)",
            ),
            store_syncs: counter(
                "store_syncs_total",
                "WAL fsyncs run for commits; with store_sync_wait_seconds_count, how many \
                 commits share one",
            ),
            connections_open: gauge(
                "connections_open",
                "gRPC connections open, within server.max_connections",
            ),
            handshake_timeouts: counter(
                "connection_handshake_timeouts_total",
                "Connections closed because the HTTP/2 preface did not arrive within \
                 server.handshake_timeout_ms",
            ),
            tls_handshake_failures: counter(
                "connection_tls_handshake_failures_total",
                "Connections whose TLS handshake failed: not TLS, a certificate from another \
                 CA or expired, or one that names no peer or operator",
            ),
            idle_closed: counter(
                "connection_idle_closed_total",
                "Connections closed because no call was open on them for \
                 server.idle_connection_timeout_ms",
            ),
            header_timeouts: counter(
                "connection_header_timeouts_total",
                "Connections closed because a frame or a request's header block, once begun, \
                 did not end within server.header_timeout_ms",
            ),
            send_timeouts: counter(
                "connection_send_timeouts_total",
                "Connections closed because their streams held response data and they took \
                 none for server.send_timeout_ms",
            ),
            connections_evicted: counter(
                "connections_evicted_total",
                "Idle connections closed to make room for a new one at \
                 server.max_connections or server.max_connections_per_address",
            ),
            connections_refused,
            peer_cursors: gauge(
                "peer_cursors",
                "Replication cursors stored (one per peer pulled within the retention period), \
                 as of the last clean-up pass",
            ),
            send_data_held_bytes: gauge(
                "send_data_held_bytes",
                "Entry data held by outgoing messages not yet taken by the transport, within \
                 limits.max_send_data_mb (streams wait for it)",
            ),
            client_calls_limited,
            clients_tracked: gauge(
                "clients_tracked",
                "Client identities (keys, or addresses for unsigned calls) whose limits are \
                 tracked, within limits.max_tracked_clients",
            ),
            quota_refusals,
            sync: Arc::new(SyncMetrics::new(&registry)),
            registry,
        }
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.entries_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Sets the store memory gauges: `(part, bytes)` as the store reports them.
    pub fn set_store_memory(&self, parts: &[(&'static str, u64)]) {
        for (part, bytes) in parts {
            self.store_memory_bytes
                .with_label_values(&[*part])
                .set(*bytes as i64);
        }
    }

    /// Brings `store_log_records_read_total` and `store_syncs_total` up to
    /// the store's own counts.
    pub fn set_store_counts(&self, log_records_read: u64, syncs: u64) {
        for (counter, total) in [
            (&self.store_log_records_read, log_records_read),
            (&self.store_syncs, syncs),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The text exposition of every metric, after refreshing the store gauges.
    pub fn render(&self, stats: &StoreStats, disk_bytes: u64) -> String {
        self.store_entries.set(stats.entries as i64);
        self.store_head_seq.set(stats.head_seq as i64);
        self.store_disk_bytes.set(disk_bytes as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec does not fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
