//! `/metrics`: OpenMetrics text through prometheus-client, from a snapshot taken per scrape.
//!
//! Latencies live in hdrhistograms (sharded per worker, see `stats`), so a custom collector turns
//! them into Prometheus histograms at fixed bucket bounds ([`BUCKETS`]) and also exports p50/p95/p99
//! as `*_quantile` gauges: dashboards can use `histogram_quantile()` across instances or read the
//! exact per-instance percentiles directly.

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;

use super::view::{self, StatsView};
use crate::shared::Shared;
use crate::stats::{MergedStats, KIND_LABELS};

/// What `/metrics` answers with (OpenMetrics 1.0, which Prometheus negotiates and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bucket upper bounds, seconds: 0.5 ms to 60 s (the `+Inf` bucket is added).
pub const BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Quantiles exported as gauges.
pub const QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")];

/// Renders every metric as OpenMetrics text.
pub fn render(shared: &Shared) -> Result<String, fmt::Error> {
    let merged = shared.stats.merged();
    let ryw = shared.runtime.load().primary.health.ryw_fallbacks.load(std::sync::atomic::Ordering::Relaxed);
    let snapshot = Snapshot {
        view: view::stats_with(shared, &merged),
        merged,
        ready: shared.admin.last_ready.get(),
        migration: crate::migration::control::status(shared).ok(),
        ryw_fallbacks: ryw,
        backup: shared.backup.metrics(shared.runtime.load().config.backup.as_ref()),
        cancel_forwards: shared.runtime.load().config.fleet.enabled().then(|| shared.cancel_forwards.snapshot()),
        fleet: shared.runtime.load().config.fleet.enabled().then(|| shared.fleet.status(shared)),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// One scrape's numbers, owned so the collector needs no lock or reference into the proxy.
struct Snapshot {
    view: StatsView,
    merged: MergedStats,
    ready: Option<bool>,
    migration: Option<crate::migration::control::Status>,
    ryw_fallbacks: u64,
    backup: crate::backup::MetricsView,
    /// Cancel requests forwarded to fleet peers, by outcome (`None` without a fleet).
    cancel_forwards: Option<[(&'static str, u64); 3]>,
    /// The fleet as this instance sees it (`None` without a fleet).
    fleet: Option<crate::fleet::Status>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("metrics::Snapshot")
    }
}

/// A sample's labels.
pub(super) type Labels = Vec<(&'static str, String)>;

/// A per-pool metric: name, help, counter (else gauge), and how to read it from a pool.
type PoolMetric<'a> = (&'a str, &'a str, bool, &'a dyn Fn(&view::PoolOnBackend) -> f64);

/// A sample: counters get `_total` appended by the encoder.
pub(super) enum Value {
    /// A counter's value.
    Counter(f64),
    /// A gauge's value.
    Gauge(f64),
}

/// One metric family; skipped when it has no samples (an empty family says nothing).
pub(super) fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, Value)>,
) -> fmt::Result {
    let Some((_, first)) = samples.first() else { return Ok(()) };
    let ty = match first {
        Value::Counter(_) => MetricType::Counter,
        Value::Gauge(_) => MetricType::Gauge,
    };
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in &samples {
        if labels.is_empty() {
            write_value(&mut m, v)?;
        } else {
            let labels: Labels = labels.iter().map(|(k, v)| (*k, escape(v))).collect();
            write_value(&mut m.encode_family(&labels)?, v)?;
        }
    }
    Ok(())
}

/// A label value as the text format needs it: the encoder writes values as given, and one bare
/// `"` (a database a client created, say) ends the value early, so Prometheus rejects the scrape.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn write_value(m: &mut MetricEncoder, v: &Value) -> fmt::Result {
    match v {
        Value::Counter(c) => m.encode_counter::<NoLabelSet, _, f64>(c, None),
        Value::Gauge(g) => m.encode_gauge(g),
    }
}

/// Cumulative counts at [`BUCKETS`] as the per-bucket counts the encoder wants, plus an
/// approximate sum (hdrhistogram keeps values to ~1%, not their exact sum), in seconds.
pub fn buckets(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut per_bucket = vec![0u64; BUCKETS.len() + 1];
    for v in h.iter_recorded() {
        let secs = h.lowest_equivalent(v.value_iterated_to()) as f64 / 1e6;
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        per_bucket[i] += v.count_at_value();
    }
    let bounds = BUCKETS.iter().copied().chain(std::iter::once(f64::MAX));
    let out = bounds.zip(per_bucket).collect();
    (h.mean() * h.len() as f64 / 1e6, h.len(), out)
}

fn histogram<L: EncodeLabelSet>(m: &mut MetricEncoder, labels: Option<&L>, h: &Histogram<u64>) -> fmt::Result {
    let (sum, count, b) = buckets(h);
    match labels {
        Some(l) => m.encode_family(l)?.encode_histogram::<NoLabelSet>(sum, count, &b, None),
        None => m.encode_histogram::<NoLabelSet>(sum, count, &b, None),
    }
}

fn quantiles(base: &[(&'static str, String)], h: &Histogram<u64>) -> Vec<(Labels, Value)> {
    QUANTILES
        .iter()
        .map(|(q, label)| {
            let mut l = base.to_vec();
            l.push(("quantile", label.to_string()));
            (l, Value::Gauge(h.value_at_quantile(*q) as f64 / 1e6))
        })
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.process(&mut enc)?;
        self.pools(&mut enc)?;
        self.backends(&mut enc)?;
        self.latency(&mut enc)?;
        self.migration(&mut enc)?;
        super::backup::encode_metrics(&self.backup, &mut enc)
    }
}

impl Snapshot {
    fn process(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let v = &self.view;
        let g = |x: f64| vec![(Labels::new(), Value::Gauge(x))];
        let c = |x: u64| vec![(Labels::new(), Value::Counter(x as f64))];
        let version = vec![(vec![("version", env!("CARGO_PKG_VERSION").to_string())], Value::Gauge(1.0))];
        family(enc, "pgshift_build_info", "pgshift version (always 1)", version)?;
        family(enc, "pgshift_paused", "1 while PAUSE holds new transactions", g(f64::from(u8::from(v.paused))))?;
        if let Some(r) = self.ready {
            family(
                enc,
                "pgshift_ready",
                "Outcome of the last /ready probe (1 ready, 0 not)",
                g(f64::from(u8::from(r))),
            )?;
        }
        family(enc, "pgshift_clients", "Logged-in clients", g(v.clients as f64))?;
        family(enc, "pgshift_client_sockets", "Open client sockets, logged in or not", g(v.client_sockets as f64))?;
        family(enc, "pgshift_pending_logins", "Client sockets still logging in", g(v.pending_logins as f64))?;
        family(enc, "pgshift_logins", "Client logins", c(v.logins))?;
        family(enc, "pgshift_login_failures", "Refused client logins", c(v.login_failures))?;
        family(enc, "pgshift_clients_adopted", "Clients handed over by an upgraded process", c(v.clients_adopted))?;
        family(enc, "pgshift_reconnects", "RECONNECT commands", c(v.reconnects))?;
        family(enc, "pgshift_failovers", "Primary changes made by role discovery", c(v.topology.failovers))?;
        let split = f64::from(u8::from(v.topology.state == crate::pool::cluster::TopologyState::SplitBrain));
        family(enc, "pgshift_split_brain", "1 while several nodes claim to be the primary", g(split))?;
        self.clusters(enc)?;
        let errors = v.errors.iter().map(|(k, n)| (vec![("class", k.clone())], Value::Counter(*n as f64))).collect();
        family(enc, "pgshift_errors", "Errors sent to clients, by SQLSTATE class", errors)?;
        let pins = v.pins.iter().map(|(k, n)| (vec![("reason", k.to_string())], Value::Counter(*n as f64))).collect();
        family(enc, "pgshift_pins", "Sessions pinned to their server connection, by reason", pins)?;
        let forwards = self.cancel_forwards.iter().flatten();
        let forwards = forwards.map(|(o, n)| (vec![("outcome", o.to_string())], Value::Counter(*n as f64))).collect();
        family(
            enc,
            "pgshift_cancel_forwarded",
            "Cancel requests for another fleet instance's clients, by outcome",
            forwards,
        )?;
        self.fleet(enc)
    }

    /// The fleet: members heard from, whether the store answers, whether this instance holds.
    fn fleet(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(f) = &self.fleet else { return Ok(()) };
        let g = |x: f64| vec![(Labels::new(), Value::Gauge(x))];
        family(
            enc,
            "pgshift_fleet_members",
            "Fleet instances heard from within heartbeat_timeout",
            g(f.members.len() as f64),
        )?;
        family(
            enc,
            "pgshift_fleet_store_up",
            "1 while the fleet's control table answers",
            g(f64::from(u8::from(f.store_reachable))),
        )?;
        family(
            enc,
            "pgshift_fleet_holding",
            "1 while this instance holds new transactions for the fleet",
            g(f64::from(u8::from(f.holding))),
        )?;
        family(
            enc,
            "pgshift_fleet_state_version",
            "Version of the fleet's shared state applied here",
            vec![(vec![("fleet", f.fleet.clone())], Value::Gauge(f.state_version as f64))],
        )
    }

    /// Per cluster: failovers and split brain; per node: the role it reports and its timeline.
    fn clusters(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let clusters = &self.view.topology.clusters;
        let cl = |c: &view::ClusterView| vec![("cluster", c.name.clone())];
        let failovers = clusters.iter().map(|c| (cl(c), Value::Counter(c.failovers as f64))).collect();
        family(enc, "pgshift_cluster_failovers", "Primary changes made by role discovery, per cluster", failovers)?;
        let split =
            |c: &view::ClusterView| f64::from(u8::from(c.state == crate::pool::cluster::TopologyState::SplitBrain));
        let splits = clusters.iter().map(|c| (cl(c), Value::Gauge(split(c)))).collect();
        family(
            enc,
            "pgshift_cluster_split_brain",
            "1 while several nodes of the cluster claim to be the primary",
            splits,
        )?;
        let per_node = |f: &dyn Fn(&view::NodeView) -> f64| -> Vec<(Labels, Value)> {
            clusters
                .iter()
                .flat_map(|c| c.nodes.iter().map(move |n| (c, n)))
                .map(|(c, n)| (vec![("cluster", c.name.clone()), ("node", n.name.clone())], Value::Gauge(f(n))))
                .collect()
        };
        let reports_primary = |n: &view::NodeView| f64::from(u8::from(n.reports == "primary"));
        family(
            enc,
            "pgshift_node_reports_primary",
            "1 if the node reports being out of recovery",
            per_node(&reports_primary),
        )?;
        family(
            enc,
            "pgshift_node_timeline",
            "Timeline the node writes on (0 in recovery)",
            per_node(&|n| n.timeline as f64),
        )
    }

    fn pools(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let groups = &self.view.pools;
        let du = |g: &view::PoolGroup| vec![("database", g.database.clone()), ("user", g.user.clone())];
        let per_group = |f: &dyn Fn(&view::PoolGroup) -> f64| -> Vec<(Labels, Value)> {
            groups.iter().map(|g| (du(g), Value::Gauge(f(g)))).collect()
        };
        family(enc, "pgshift_pool_cl_active", "Clients idle or holding a server", per_group(&|g| g.cl_active as f64))?;
        family(enc, "pgshift_pool_cl_waiting", "Clients waiting for a server", per_group(&|g| g.cl_waiting as f64))?;
        family(enc, "pgshift_pool_maxwait_seconds", "Oldest waiting client's wait", per_group(&|g| g.maxwait))?;
        let per_backend = |counter: bool, f: &dyn Fn(&view::PoolOnBackend) -> f64| -> Vec<(Labels, Value)> {
            groups
                .iter()
                .flat_map(|g| g.backends.iter().map(move |b| (g, b)))
                .map(|(g, b)| {
                    let mut l = du(g);
                    l.push(("backend", b.backend.clone()));
                    (l, if counter { Value::Counter(f(b)) } else { Value::Gauge(f(b)) })
                })
                .collect()
        };
        let s = 1e-6;
        let families: [PoolMetric; 16] = [
            ("pgshift_pool_sv_active", "Server connections leased to clients", false, &|b| b.sizes.sv_active as f64),
            ("pgshift_pool_sv_idle", "Idle server connections", false, &|b| b.sizes.sv_idle as f64),
            ("pgshift_pool_sv_login", "Server connections being opened", false, &|b| b.sizes.sv_login as f64),
            ("pgshift_pool_transactions", "Transactions completed", true, &|b| b.traffic.xacts as f64),
            ("pgshift_pool_queries", "Requests completed", true, &|b| b.traffic.queries as f64),
            ("pgshift_pool_received_bytes", "Bytes from clients", true, &|b| b.traffic.bytes_in as f64),
            ("pgshift_pool_sent_bytes", "Bytes to clients", true, &|b| b.traffic.bytes_out as f64),
            ("pgshift_pool_transaction_time_seconds", "Time in transactions", true, &|b| b.traffic.xact_us as f64 * s),
            ("pgshift_pool_query_time_seconds", "Time in requests", true, &|b| b.traffic.query_us as f64 * s),
            ("pgshift_pool_wait_time_seconds", "Time clients waited for a server", true, &|b| {
                b.traffic.wait_us as f64 * s
            }),
            ("pgshift_pool_server_connects", "Server connections opened", true, &|b| b.connects as f64),
            ("pgshift_pool_server_connect_errors", "Failed server connects", true, &|b| b.connect_errors as f64),
            ("pgshift_pool_reserve_used", "Times the reserve pool was used", true, &|b| b.reserve_used as f64),
            (
                "pgshift_pool_session_resets",
                "Server sessions reset after a transaction not proven free of session effects",
                true,
                &|b| b.resets as f64,
            ),
            (
                "pgshift_pool_cancel_holds",
                "Server connections held from other clients until a cancel toward them finished",
                true,
                &|b| b.cancel_holds as f64,
            ),
            (
                "pgshift_pool_cancels_dropped",
                "Cancel requests dropped because the client had no query running on a server",
                true,
                &|b| b.cancels_dropped as f64,
            ),
        ];
        for (name, help, counter, f) in families {
            family(enc, name, help, per_backend(counter, f))?;
        }
        Ok(())
    }

    fn backends(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let bs = &self.view.backends;
        let l = |b: &view::BackendView| {
            let role = serde_json::to_value(b.role).ok().and_then(|v| v.as_str().map(str::to_string));
            vec![("backend", b.name.clone()), ("role", role.unwrap_or_default())]
        };
        let up = bs.iter().map(|b| (l(b), Value::Gauge(f64::from(u8::from(!matches!(b.health, "banned" | "down"))))));
        family(enc, "pgshift_backend_up", "1 unless banned or its last probe failed", up.collect())?;
        let banned = bs.iter().map(|b| (l(b), Value::Gauge(f64::from(u8::from(b.banned)))));
        family(enc, "pgshift_backend_banned", "1 while banned after failures", banned.collect())?;
        let lag = bs.iter().map(|b| (l(b), Value::Gauge(b.lag_ms as f64 / 1e3)));
        family(enc, "pgshift_backend_replication_lag_seconds", "Replay lag at the last probe", lag.collect())?;
        let routed = bs.iter().map(|b| (l(b), Value::Counter(b.routed as f64)));
        family(enc, "pgshift_backend_routed", "Requests routed to the backend", routed.collect())?;
        family(
            enc,
            "pgshift_read_your_writes_primary_reads",
            "Reads sent to the primary because no replica had replayed the client's last write",
            vec![(Labels::new(), Value::Counter(self.ryw_fallbacks as f64))],
        )
    }

    fn migration(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(m) = &self.migration else { return Ok(()) };
        let g = |x: f64| vec![(Labels::new(), Value::Gauge(x))];
        let c = |x: u64| vec![(Labels::new(), Value::Counter(x as f64))];
        let phases = ["off", "dual_write", "shift_reads", "cutover", "done"];
        let current = m.phase.name();
        let phase = phases
            .iter()
            .map(|p| (vec![("phase", p.to_string())], Value::Gauge(f64::from(u8::from(*p == current)))))
            .collect();
        family(enc, "pgshift_migration_phase", "1 for the current migration phase", phase)?;
        let per_db = m
            .databases
            .iter()
            .flat_map(|d| {
                phases.iter().map(move |p| {
                    (
                        vec![("database", d.database.clone()), ("phase", p.to_string())],
                        Value::Gauge(f64::from(u8::from(*p == d.phase.name()))),
                    )
                })
            })
            .collect();
        family(enc, "pgshift_migration_database_phase", "1 for each database's current phase", per_db)?;
        family(
            enc,
            "pgshift_migration_read_percent",
            "Share of sessions reading from the target",
            g(f64::from(m.read_percent)),
        )?;
        if let Some(o) = m.observed_read_percent {
            family(enc, "pgshift_migration_observed_read_percent", "Share of reads the target served", g(o))?;
        }
        family(
            enc,
            "pgshift_migration_target_up",
            "1 while the target's primary answers probes",
            g(f64::from(u8::from(m.target_connected))),
        )?;
        family(
            enc,
            "pgshift_migration_mirror_queue",
            "Committed transactions waiting for replay",
            g(m.mirror.queue_depth as f64),
        )?;
        family(enc, "pgshift_migration_mirrored", "Transactions replayed on the other store", c(m.mirror.mirrored))?;
        family(enc, "pgshift_migration_mirror_failed", "Transactions that could not be replayed", c(m.mirror.failed))?;
        family(
            enc,
            "pgshift_migration_diverged",
            "Transactions whose replay differed or was lost",
            c(m.mirror.diverged),
        )?;
        let per_db = |f: &dyn Fn(&crate::migration::control::LogicalStatus) -> Option<f64>| {
            m.logical
                .iter()
                .filter_map(|d| Some((vec![("database", d.database.clone())], Value::Gauge(f(d)?))))
                .collect()
        };
        if !m.logical.is_empty() {
            family(
                enc,
                "pgshift_migration_sync_lag_bytes",
                "Logical sync: bytes of the serving server's WAL the other one has not applied",
                per_db(&|d| d.lag_bytes.map(|b| b as f64)),
            )?;
            family(
                enc,
                "pgshift_migration_sync_tables",
                "Logical sync: tables replicated",
                per_db(&|d| Some(f64::from(d.tables))),
            )?;
            family(
                enc,
                "pgshift_migration_sync_tables_copied",
                "Logical sync: tables whose initial copy is complete",
                per_db(&|d| Some(f64::from(d.tables_copied))),
            )?;
        }
        let running = m.ramp.state == crate::migration::ramp::RampState::Running;
        family(
            enc,
            "pgshift_migration_ramp_running",
            "1 while the read-shift autopilot raises the share",
            g(f64::from(u8::from(running))),
        )?;
        family(
            enc,
            "pgshift_migration_ramp_breaches",
            "Times the read-shift autopilot dropped the share to 0% (errors, latency or the target down)",
            c(m.ramp.breaches),
        )?;
        let per_report = |f: &dyn Fn(&crate::migration::verify::Report) -> f64| {
            m.verifications.iter().map(|r| (vec![("database", r.database.clone())], Value::Gauge(f(r)))).collect()
        };
        family(
            enc,
            "pgshift_migration_verify_interval_seconds",
            "Scheduled verification interval (0: only when asked)",
            g(m.verify_interval_seconds as f64),
        )?;
        if !m.verifications.is_empty() {
            family(
                enc,
                "pgshift_migration_verify_differences",
                "Differences found by the last verification of the database",
                per_report(&|r| r.differences as f64),
            )?;
            family(
                enc,
                "pgshift_migration_verify_rows_checked",
                "Rows compared one by one by the last verification of the database",
                per_report(&|r| r.rows_checked as f64),
            )?;
            family(
                enc,
                "pgshift_migration_verify_last_timestamp_seconds",
                "When the last verification of the database finished (Unix time)",
                per_report(&|r| r.finished_at as f64),
            )?;
            family(
                enc,
                "pgshift_migration_verify_failed",
                "1 when the last verification of the database could not compare",
                per_report(&|r| f64::from(u8::from(r.error.is_some()))),
            )?;
        }
        Ok(())
    }

    fn latency(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let m = &self.merged;
        let xact = "pgshift_transaction_latency_seconds";
        histogram::<NoLabelSet>(
            &mut enc.encode_descriptor(xact, "Transaction latency", None, MetricType::Histogram)?,
            None,
            &m.xact,
        )?;
        family(enc, &format!("{xact}_quantile"), "Transaction latency percentiles", quantiles(&[], &m.xact))?;

        let query = "pgshift_query_latency_seconds";
        let mut me = enc.encode_descriptor(query, "Request latency by statement kind", None, MetricType::Histogram)?;
        for (kind, h) in KIND_LABELS.iter().zip(m.query.iter()) {
            histogram(&mut me, Some(&vec![("kind", *kind)]), h)?;
        }
        let q = KIND_LABELS.iter().zip(m.query.iter()).flat_map(|(k, h)| quantiles(&[("kind", k.to_string())], h));
        family(enc, &format!("{query}_quantile"), "Request latency percentiles by statement kind", q.collect())?;

        let wait = "pgshift_pool_wait_seconds";
        histogram::<NoLabelSet>(
            &mut enc.encode_descriptor(wait, "Wait for a server connection", None, MetricType::Histogram)?,
            None,
            &m.wait,
        )?;
        family(enc, &format!("{wait}_quantile"), "Pool wait percentiles", quantiles(&[], &m.wait))
    }
}
