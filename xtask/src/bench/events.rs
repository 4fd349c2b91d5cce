//! Section 5, events: deny-to-event latency for a follower, and a flood.

use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{
    context::{rmdir_retry, Ctx},
    percall::{Percall, Route},
    report::Table,
    sbx::{self, EventFollower},
    stats::{f, thousands, x, Stat},
    worker, Plan,
};

/// Deny events: latency from a denied call to the line a follower prints,
/// and what a flood of denials delivers.
pub(super) struct Events {
    pub(super) latency_ms: Vec<f64>,
    pub(super) paced: u32,
    pub(super) flood_calls: u64,
    pub(super) flood_ns_per_call: f64,
    pub(super) flood_s: f64,
    pub(super) flood_delivered: u64,
    pub(super) flood_dropped: Option<u64>,
}

impl Events {
    pub(super) fn json(&self) -> Value {
        json!({
            "latency_ms": { "samples": self.latency_ms, "stat": Stat::of(&self.latency_ms).map(Stat::json), "max": self.latency_ms.iter().copied().fold(0.0, f64::max) },
            "paced_denials": self.paced,
            "flood": {
                "denied_calls": self.flood_calls,
                "ns_per_call": self.flood_ns_per_call,
                "seconds": self.flood_s,
                "events_delivered": self.flood_delivered,
                "events_dropped": self.flood_dropped,
            },
        })
    }
}

pub(super) fn events(ctx: &Ctx, plan: &Plan) -> Result<Events> {
    let cg = ctx.mkcg("events")?;
    ctx.attach(&cg, &sbx::small_policy(), None, None)?;
    let (_denied, port) = worker::bound_denied(libc::SOCK_STREAM, Ipv4Addr::LOCALHOST)?;
    let reader = EventFollower::start(ctx, &cg)?;

    // Latency: denied connects 20 ms apart, far below the rate limit.
    let paced = if plan.rounds >= 7 { 100 } else { 20 };
    let sent = worker::paced(ctx, &cg, port, paced)?;
    reader.settle(Duration::from_millis(500), Duration::from_secs(5));
    let arrivals = reader.arrivals();
    if arrivals.len() != sent.len() {
        bail!(
            "{} denied connects gave {} events; expected one each (the rate limit is far above this pace)",
            sent.len(),
            arrivals.len()
        );
    }
    let latency_ms: Vec<f64> = sent.iter().zip(&arrivals).map(|(s, a)| f(a.saturating_sub(*s)) / 1e6).collect();

    // Flood: as many denied connects as the CPU allows.
    let before = reader.count();
    let dropped_before = sbx::events_dropped(ctx, &cg);
    let flood = plan.fast_iters * 4;
    let (took, r) = worker::flood(ctx, &cg, port, flood)?;
    reader.settle(Duration::from_secs(1), Duration::from_secs(10));
    let delivered = (reader.count() - before) as u64;
    let dropped = sbx::events_dropped(ctx, &cg).zip(dropped_before).map(|(a, b)| a.saturating_sub(b));
    drop(reader);
    ctx.detach(&cg)?;
    rmdir_retry(&cg);
    Ok(Events {
        latency_ms,
        paced,
        flood_calls: u64::from(flood + flood / 10),
        flood_ns_per_call: r["ns_per_op"].as_f64().unwrap_or(f64::NAN),
        flood_s: took.as_secs_f64(),
        flood_delivered: delivered,
        flood_dropped: dropped,
    })
}

pub(super) fn events_table(e: &Events, p: Option<&Percall>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### 5. Events\n\nA sandbox with the small policy and one follower (`sbx-user events --follow --json`). Latency: {} denied \
         connects 20 ms apart, from just before the call to the follower's line arriving. Flood: denied connects as fast as one \
         CPU makes them.\n",
        e.paced
    );
    let mut t = Table::new(&["figure", "value"]);
    if let Some(l) = Stat::of(&e.latency_ms) {
        t.row(vec![
            "deny to event line".into(),
            format!(
                "median {:.2} ms, min {:.2} ms, max {:.2} ms",
                l.median,
                l.min,
                e.latency_ms.iter().copied().fold(0.0, f64::max)
            ),
        ]);
    }
    t.row(vec![
        "flood: denied connects".into(),
        format!("{} in {:.2} s ({} ns each)", thousands(f(e.flood_calls)), e.flood_s, thousands(e.flood_ns_per_call)),
    ]);
    t.row(vec![
        "flood: events delivered".into(),
        format!("{} ({:.0} per s)", thousands(f(e.flood_delivered)), f(e.flood_delivered) / e.flood_s),
    ]);
    t.row(vec!["flood: events dropped (rate limit)".into(), e.flood_dropped.map_or("n/a".into(), |d| thousands(f(d)))]);
    if let Some(p) = p {
        if let Some(r) = p.route(Route::Loopback).and_then(|l| l.ratio("sbx-audit", "sbx-small", "denied_connect")) {
            t.row(vec![
                "denied connect, audit mode with follower vs enforce".into(),
                format!("median {} (audit lets it through to a closed port)", x(r.median)),
            ]);
        }
    }
    let _ = writeln!(s, "{t}");
    s
}
