//! What the runtime's calls to its agent cost: a round-trip histogram and
//! a count of calls per method and outcome, fed by `crate::agent::Agent`.
//!
//! Calls that wait for something to happen in the guest (a process's exit,
//! output, an OOM kill) are counted but kept out of the histogram: their
//! duration is the guest's business, not the RPC's.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::histogram::{Histogram, RPC_BOUNDS};
use super::text::{Kind, TextWriter};

#[derive(Debug)]
pub struct AgentMetrics {
    rtt: Histogram,
    /// (method, ok) -> calls.
    calls: Mutex<BTreeMap<(&'static str, bool), u64>>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            rtt: Histogram::new(RPC_BOUNDS),
            calls: Mutex::new(BTreeMap::new()),
        }
    }
}

impl AgentMetrics {
    /// One finished call; `timed` says whether its duration is a round trip.
    pub fn record(&self, method: &'static str, ok: bool, took: Duration, timed: bool) {
        if timed {
            self.rtt.observe(took);
        }
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method, ok))
            .or_default() += 1;
    }

    pub fn write(&self, w: &mut TextWriter) {
        w.family(
            "husk_agent_rpc_duration_seconds",
            Kind::Histogram,
            "Round-trip time of the runtime's calls to the guest agent (calls that wait for guest events excluded).",
        )
        .histogram("husk_agent_rpc_duration_seconds", &[], &self.rtt.snapshot());
        w.family(
            "husk_agent_rpcs_total",
            Kind::Counter,
            "Calls to the guest agent by method and result.",
        );
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for ((method, ok), n) in calls {
            let result = if ok { "ok" } else { "error" };
            w.sample(
                "husk_agent_rpcs_total",
                &[("method", method), ("result", result)],
                n as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_and_times_round_trips() {
        let m = AgentMetrics::default();
        m.record("check", true, Duration::from_millis(3), true);
        m.record("check", false, Duration::from_millis(3), true);
        m.record("wait_process", true, Duration::from_secs(100), false);
        let mut w = TextWriter::new();
        m.write(&mut w);
        let e = super::super::parse::parse(&w.finish()).unwrap();
        assert_eq!(
            e.value("husk_agent_rpc_duration_seconds_count", &[]),
            Some(2.0)
        );
        assert_eq!(
            e.value(
                "husk_agent_rpcs_total",
                &[("method", "wait_process"), ("result", "ok")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.value(
                "husk_agent_rpcs_total",
                &[("method", "check"), ("result", "error")]
            ),
            Some(1.0)
        );
    }
}
