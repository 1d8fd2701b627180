//! Everything one run produced: the machine, the settings, every sample. Serialised as the
//! run's JSON; the plots and the Markdown summary are drawn from it.
use serde::{Deserialize, Serialize};

use crate::bench::args::Settings;

/// The machine and software the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -r` (from /proc/sys/kernel/osrelease).
    pub kernel: String,
    /// The CPU model (first `model name` of /proc/cpuinfo).
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Memory, KiB.
    pub mem_kib: u64,
    /// /proc/loadavg before the run.
    pub loadavg_before: String,
    /// /proc/loadavg after the run.
    pub loadavg_after: String,
    /// Versions: bridgewall, iptables, iperf3.
    pub versions: Vec<(String, String)>,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix: u64,
}

/// One packets/s sample.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateSample {
    /// Path name.
    pub path: String,
    /// Round.
    pub round: u32,
    /// User rules installed.
    pub rules: usize,
    /// Frame size (64 or 1500, with FCS).
    pub size: usize,
    /// Concurrent flows.
    pub flows: usize,
    /// Packets/s received by the server container's interface.
    pub pps: f64,
    /// Packets/s the generator got the kernel to take.
    pub offered_pps: f64,
    /// Whole machine busy CPU (softirq included) per received packet, ns.
    pub cpu_ns_per_pkt: f64,
    /// Softirq CPU per received packet, ns.
    pub softirq_ns_per_pkt: f64,
    /// This process's CPU (generator + dataplane threads, softirq run in their context) per
    /// received packet, ns.
    pub process_ns_per_pkt: f64,
    /// The generator thread's own CPU per sent packet, ns.
    pub generator_ns_per_pkt: f64,
    /// Cores busy, whole machine.
    pub cores: f64,
    /// Cores busy outside this process (other work on the machine, ksoftirqd).
    pub other_cores: f64,
    /// Path-specific counters.
    pub extra: serde_json::Value,
}

/// The generator alone on one veth pair (no path): what it can offer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GeneratorSample {
    /// Frame size.
    pub size: usize,
    /// Flows.
    pub flows: usize,
    /// Packets/s taken by the kernel.
    pub offered_pps: f64,
    /// Packets/s received on the peer.
    pub received_pps: f64,
    /// Generator thread CPU per packet, ns.
    pub generator_ns_per_pkt: f64,
    /// Whole machine CPU per packet, ns.
    pub cpu_ns_per_pkt: f64,
}

/// One latency run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencySample {
    /// Path name.
    pub path: String,
    /// Round.
    pub round: u32,
    /// User rules installed.
    pub rules: usize,
    /// Requests per second offered.
    pub rate: f64,
    /// Requests answered.
    pub answered: u64,
    /// Requests lost (no answer within 100 ms).
    pub lost: u64,
    /// Percentiles of the round-trip time, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// The CDF: (round-trip µs, fraction at or below).
    pub cdf: Vec<(f64, f64)>,
}

/// One iperf3 run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TcpSample {
    /// Path name.
    pub path: String,
    /// Round.
    pub round: u32,
    /// User rules installed.
    pub rules: usize,
    /// Received throughput, Gbit/s.
    pub gbps: f64,
    /// Retransmits the sender counted.
    pub retransmits: u64,
}

/// One new-flow run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewFlowSample {
    /// Path name.
    pub path: String,
    /// Round.
    pub round: u32,
    /// User rules installed.
    pub rules: usize,
    /// TCP connect + close per second (several client threads).
    pub tcp_per_s: f64,
    /// TCP connects that failed or timed out.
    pub tcp_failed: u64,
    /// UDP first packets (a new socket per request, answered) per second.
    pub udp_per_s: f64,
    /// UDP requests without an answer.
    pub udp_lost: u64,
}

/// One churn run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnSample {
    /// Path name.
    pub path: String,
    /// Round.
    pub round: u32,
    /// User rules at the start.
    pub rules: usize,
    /// Rules inserted.
    pub inserted: u64,
    /// Insertions per second (each one in force before the next starts).
    pub inserts_per_s: f64,
    /// Paced packets sent meanwhile.
    pub sent: u64,
    /// Of those, not received.
    pub lost: u64,
    /// The paced rate, packets/s.
    pub rate: f64,
    /// Frames the client's host-side veth received (what reached the path).
    pub reached_path: u64,
    /// The control window (same length, no insertion): packets sent.
    pub control_sent: u64,
    /// The control window: packets not received.
    pub control_lost: u64,
    /// Path-specific counters over the run.
    pub extra: serde_json::Value,
}

/// One path's description.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathInfo {
    /// Name.
    pub name: String,
    /// What it is.
    pub description: String,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Format version of this JSON.
    pub schema: u32,
    /// The machine.
    pub machine: Machine,
    /// The settings.
    pub settings: Settings,
    /// The paths.
    pub paths: Vec<PathInfo>,
    /// How the generator alone performs.
    pub generator: Vec<GeneratorSample>,
    /// Packets/s samples.
    pub rate: Vec<RateSample>,
    /// Latency samples.
    pub latency: Vec<LatencySample>,
    /// TCP samples.
    pub tcp: Vec<TcpSample>,
    /// New-flow samples.
    pub new_flows: Vec<NewFlowSample>,
    /// Churn samples.
    pub churn: Vec<ChurnSample>,
    /// Seconds to install N rules, per path: (path, rules, seconds).
    pub rule_load_secs: Vec<(String, usize, f64)>,
    /// Measurements that could not be taken, and why.
    pub errors: Vec<String>,
}

/// Median, min and max of `v` (NaN for an empty slice).
pub fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn summary_takes_median_min_max() {
        assert_eq!(super::summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(super::summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(super::summary(&[]).0.is_nan());
    }
}
