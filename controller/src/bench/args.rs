//! The command line of `bridgewall bench`, as a `clap` struct the CLI flattens.
use std::path::PathBuf;

use crate::bench::paths::PathKind;

/// One measurement the harness can take.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Measurement {
    /// Packets/s and CPU per packet, over frame sizes, flow counts and rule counts.
    Rate,
    /// UDP request/response latency at a fixed moderate rate.
    Latency,
    /// TCP bulk throughput with iperf3.
    Tcp,
    /// New TCP connections and new UDP flows per second.
    NewFlows,
    /// Rule insertions per second while traffic flows, and packets lost meanwhile.
    Churn,
}

/// `bridgewall bench` options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// CI's smoke run: one round, short runs, one rule count, flow count and size; checks only
    /// that every path carried traffic and that the files are well formed.
    #[arg(long)]
    pub quick: bool,
    /// Draw the plots and the summary from this run's JSON into `--out` instead of
    /// measuring (no root needed).
    #[arg(long, value_name = "JSON")]
    pub from: Option<PathBuf>,
    /// Directory for the JSON, the plots and the Markdown summary.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Paths to compare (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL.to_vec())]
    pub paths: Vec<PathKind>,
    /// User rule counts in DOCKER-USER (default 0,10,1000,10000; quick: 10).
    #[arg(long, value_delimiter = ',')]
    pub rules: Option<Vec<usize>>,
    /// Concurrent UDP flows of the rate test (default 1,1000,100000; quick: 1000).
    #[arg(long, value_delimiter = ',')]
    pub flows: Option<Vec<usize>>,
    /// Frame sizes of the rate test, Ethernet sizes with the FCS: 64 sends 60-byte frames, 1500
    /// sends MTU-sized ones (1,500-byte IP packets) (default 64,1500; quick: 64).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Rounds, each running every path in turn (default 3; quick: 1).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per rate sample (default 2; quick: 0.5).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Measurements to take (comma-separated; default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub measure: Option<Vec<Measurement>>,
}

/// [`Args`] with the defaults of the mode filled in.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Quick (smoke) mode.
    pub quick: bool,
    /// Output directory.
    pub out: PathBuf,
    /// Paths compared.
    pub paths: Vec<PathKind>,
    /// User rule counts.
    pub rules: Vec<usize>,
    /// Flow counts.
    pub flows: Vec<usize>,
    /// Frame sizes (64, 1500: the Ethernet sizes with FCS).
    pub sizes: Vec<usize>,
    /// Rounds.
    pub rounds: u32,
    /// Seconds per rate sample.
    pub secs: f64,
    /// Seconds of the latency, TCP, new-flow and churn runs.
    pub long_secs: f64,
    /// Measurements taken.
    pub measure: Vec<Measurement>,
}

impl Args {
    /// Arguments for a quick run writing to `out`, as CI's smoke test uses them.
    pub fn quick(out: PathBuf) -> Self {
        Args {
            quick: true,
            from: None,
            out,
            paths: PathKind::ALL.to_vec(),
            rules: None,
            flows: None,
            sizes: None,
            rounds: None,
            secs: None,
            measure: None,
        }
    }

    /// The settings these arguments mean.
    pub fn settings(&self) -> Settings {
        let q = self.quick;
        Settings {
            quick: q,
            out: self.out.clone(),
            paths: self.paths.clone(),
            rules: self.rules.clone().unwrap_or_else(|| {
                if q {
                    vec![10]
                } else {
                    vec![0, 10, 1000, 10000]
                }
            }),
            flows: self.flows.clone().unwrap_or_else(|| {
                if q {
                    vec![1000]
                } else {
                    vec![1, 1000, 100_000]
                }
            }),
            sizes: self
                .sizes
                .clone()
                .unwrap_or_else(|| if q { vec![64] } else { vec![64, 1500] }),
            rounds: self.rounds.unwrap_or(if q { 1 } else { 3 }),
            secs: self.secs.unwrap_or(if q { 0.5 } else { 2.0 }),
            long_secs: if q { 0.5 } else { 3.0 },
            measure: self.measure.clone().unwrap_or_else(|| {
                vec![
                    Measurement::Rate,
                    Measurement::Latency,
                    Measurement::Tcp,
                    Measurement::NewFlows,
                    Measurement::Churn,
                ]
            }),
        }
    }
}
