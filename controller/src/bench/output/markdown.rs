//! The Markdown summary: machine, method, and one table per measurement with medians and
//! [min–max] over the rounds.
use std::fmt::Write as _;

use crate::bench::report::{Report, summary};

fn cell(v: &[f64], scale: f64, digits: usize) -> String {
    let (m, lo, hi) = summary(v);
    if m.is_nan() {
        return "–".into();
    }
    if v.len() == 1 {
        return format!("{:.*}", digits, m / scale);
    }
    format!(
        "{:.*} [{:.*}–{:.*}]",
        digits,
        m / scale,
        digits,
        lo / scale,
        digits,
        hi / scale
    )
}

fn uniq<T: PartialEq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in it {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The summary of `r` as Markdown.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "# bridgewall bench{}\n",
        if r.settings.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        s,
        "- Machine: {} × {}, {} MiB, Linux {}",
        m.cpus,
        m.cpu_model,
        m.mem_kib / 1024,
        m.kernel
    );
    let _ = writeln!(
        s,
        "- Load average before / after: {} / {}",
        m.loadavg_before, m.loadavg_after
    );
    for (k, v) in &m.versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- {} round(s), paths alternating within each; {} s per rate sample; medians [min–max] over rounds\n",
        r.settings.rounds, r.settings.secs
    );
    let _ = writeln!(s, "## Paths\n");
    for p in &r.paths {
        let _ = writeln!(s, "- `{}`: {}", p.name, p.description);
    }

    if !r.generator.is_empty() {
        let _ = writeln!(s, "\n## Generator alone (bare veth pair, no path)\n");
        let _ = writeln!(
            s,
            "| size | flows | offered kpps | received kpps | generator ns/pkt | machine ns/pkt |\n|---|---|---|---|---|---|"
        );
        for g in &r.generator {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                g.size,
                g.flows,
                g.offered_pps / 1e3,
                g.received_pps / 1e3,
                g.generator_ns_per_pkt,
                g.cpu_ns_per_pkt
            );
        }
    }

    if !r.rate.is_empty() {
        let _ = writeln!(s, "\n## Packets/s and CPU per packet\n");
        let _ = writeln!(
            s,
            "| size | flows | rules | path | kpps | offered kpps | CPU ns/pkt (machine) | softirq ns/pkt | process ns/pkt | cores |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for size in uniq(r.rate.iter().map(|x| x.size)) {
            for flows in uniq(r.rate.iter().map(|x| x.flows)) {
                for rules in uniq(r.rate.iter().map(|x| x.rules)) {
                    for path in uniq(r.rate.iter().map(|x| x.path.clone())) {
                        let v: Vec<_> = r
                            .rate
                            .iter()
                            .filter(|x| {
                                x.size == size
                                    && x.flows == flows
                                    && x.rules == rules
                                    && x.path == path
                            })
                            .collect();
                        if v.is_empty() {
                            continue;
                        }
                        let col =
                            |f: &dyn Fn(&crate::bench::report::RateSample) -> f64| -> Vec<f64> {
                                v.iter().map(|x| f(x)).collect()
                            };
                        let _ = writeln!(
                            s,
                            "| {size} | {flows} | {rules} | {path} | {} | {} | {} | {} | {} | {} |",
                            cell(&col(&|x| x.pps), 1e3, 0),
                            cell(&col(&|x| x.offered_pps), 1e3, 0),
                            cell(&col(&|x| x.cpu_ns_per_pkt), 1.0, 0),
                            cell(&col(&|x| x.softirq_ns_per_pkt), 1.0, 0),
                            cell(&col(&|x| x.process_ns_per_pkt), 1.0, 0),
                            cell(&col(&|x| x.cores), 1.0, 2),
                        );
                    }
                }
            }
        }
    }

    if !r.rate.is_empty() {
        targets(&mut s, r);
    }

    if !r.rate.is_empty() && !r.generator.is_empty() {
        let _ = writeln!(s, "\n## Is the generator the bottleneck?\n");
        let _ = writeln!(
            s,
            "The generator alone (table above) is the most it can offer. bridgewall forwards on its own core: where it offers more than is delivered, the path is the limit. The kernel paths run in the softirq of the generator's own transmit, on its core: delivered = offered, and that core's time per packet (1/rate) is the generator's cost (measured alone) plus the path's. The last column is the rate the path would reach on that core with a free generator.\n"
        );
        let _ = writeln!(
            s,
            "| size | flows | rules | path | delivered kpps | offered kpps | generator alone kpps | sender core ns/pkt | of which generator | path alone, kpps bound |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for size in uniq(r.rate.iter().map(|x| x.size)) {
            for flows in uniq(r.rate.iter().map(|x| x.flows)) {
                let Some(g) = r
                    .generator
                    .iter()
                    .find(|g| g.size == size && g.flows == flows)
                else {
                    continue;
                };
                let gen_ns = 1e9 / g.offered_pps.max(1.0);
                for rules in uniq(r.rate.iter().map(|x| x.rules)) {
                    for path in uniq(r.rate.iter().map(|x| x.path.clone())) {
                        let v: Vec<_> = r
                            .rate
                            .iter()
                            .filter(|x| {
                                x.size == size
                                    && x.flows == flows
                                    && x.rules == rules
                                    && x.path == path
                            })
                            .collect();
                        if v.is_empty() {
                            continue;
                        }
                        let pps = summary(&v.iter().map(|x| x.pps).collect::<Vec<_>>()).0;
                        let offered =
                            summary(&v.iter().map(|x| x.offered_pps).collect::<Vec<_>>()).0;
                        let core_ns = 1e9 / offered.max(1.0);
                        let (share, bound) = if offered > pps * 1.05 {
                            ("n/a (path-limited)".to_string(), "–".to_string())
                        } else {
                            let path_ns = (core_ns - gen_ns).max(1.0);
                            (
                                format!("{:.0}%", 100.0 * gen_ns / core_ns),
                                format!("{:.0}", 1e6 / path_ns),
                            )
                        };
                        let _ = writeln!(
                            s,
                            "| {size} | {flows} | {rules} | {path} | {:.0} | {:.0} | {:.0} | {:.0} | {share} | {bound} |",
                            pps / 1e3,
                            offered / 1e3,
                            g.offered_pps / 1e3,
                            core_ns
                        );
                    }
                }
            }
        }
    }

    if !r.latency.is_empty() {
        let _ = writeln!(s, "\n## UDP request/response latency (µs)\n");
        let _ = writeln!(
            s,
            "| path | rules | rate/s | p50 | p99 | p99.9 | max | lost |\n|---|---|---|---|---|---|---|---|"
        );
        for path in uniq(r.latency.iter().map(|x| x.path.clone())) {
            let v: Vec<_> = r.latency.iter().filter(|x| x.path == path).collect();
            let col = |f: &dyn Fn(&crate::bench::report::LatencySample) -> f64| -> Vec<f64> {
                v.iter().map(|x| f(x)).collect()
            };
            let _ = writeln!(
                s,
                "| {path} | {} | {:.0} | {} | {} | {} | {} | {} |",
                v[0].rules,
                v[0].rate,
                cell(&col(&|x| x.p50_us), 1.0, 0),
                cell(&col(&|x| x.p99_us), 1.0, 0),
                cell(&col(&|x| x.p999_us), 1.0, 0),
                cell(&col(&|x| x.max_us), 1.0, 0),
                v.iter().map(|x| x.lost).sum::<u64>()
            );
        }
    }

    if !r.tcp.is_empty() {
        let _ = writeln!(s, "\n## TCP bulk (iperf3), Gbit/s\n");
        let _ = writeln!(
            s,
            "| path | rules | Gbit/s | retransmits |\n|---|---|---|---|"
        );
        for path in uniq(r.tcp.iter().map(|x| x.path.clone())) {
            let v: Vec<_> = r.tcp.iter().filter(|x| x.path == path).collect();
            let g: Vec<f64> = v.iter().map(|x| x.gbps).collect();
            let _ = writeln!(
                s,
                "| {path} | {} | {} | {} |",
                v[0].rules,
                cell(&g, 1.0, 2),
                v.iter().map(|x| x.retransmits).sum::<u64>()
            );
        }
    }

    if !r.new_flows.is_empty() {
        let _ = writeln!(s, "\n## New flows per second\n");
        let _ = writeln!(
            s,
            "| path | rules | TCP connect+close/s | TCP failed | UDP first packets/s | UDP lost |\n|---|---|---|---|---|---|"
        );
        for path in uniq(r.new_flows.iter().map(|x| x.path.clone())) {
            let v: Vec<_> = r.new_flows.iter().filter(|x| x.path == path).collect();
            let t: Vec<f64> = v.iter().map(|x| x.tcp_per_s).collect();
            let u: Vec<f64> = v.iter().map(|x| x.udp_per_s).collect();
            let _ = writeln!(
                s,
                "| {path} | {} | {} | {} | {} | {} |",
                v[0].rules,
                cell(&t, 1.0, 0),
                v.iter().map(|x| x.tcp_failed).sum::<u64>(),
                cell(&u, 1.0, 0),
                v.iter().map(|x| x.udp_lost).sum::<u64>()
            );
        }
    }

    if !r.churn.is_empty() {
        let _ = writeln!(s, "\n## Policy churn under a paced stream\n");
        let _ = writeln!(
            s,
            "{:.0} packets/s of 64 B over 1,000 flows; the control is the same window without insertions.\n",
            r.churn.first().map_or(0.0, |c| c.rate)
        );
        let _ = writeln!(
            s,
            "| path | round | rules at start | insertions/s | inserted | sent | lost | control: sent | control: lost |\n|---|---|---|---|---|---|---|---|---|"
        );
        for c in &r.churn {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                c.path,
                c.round,
                c.rules,
                c.inserts_per_s,
                c.inserted,
                c.sent,
                c.lost,
                c.control_sent,
                c.control_lost
            );
        }
    }

    if !r.rule_load_secs.is_empty() {
        let _ = writeln!(s, "\n## Time to install N user rules (s)\n");
        let _ = writeln!(s, "| path | rules | seconds |\n|---|---|---|");
        for (p, n, t) in &r.rule_load_secs {
            let _ = writeln!(s, "| {p} | {n} | {t:.3} |");
        }
    }

    if !r.errors.is_empty() {
        let _ = writeln!(s, "\n## Not measured\n");
        for e in &r.errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    s
}

/// Samples taken while the rest of the machine was idle (cores busy outside this process
/// below this): bridgewall's worker is a user thread, which other work preempts, while the
/// kernel paths run in softirq, which it does not.
pub const QUIET_OTHER_CORES: f64 = 0.15;

fn rate_median(
    r: &Report,
    path: &str,
    rules: usize,
    size: usize,
    flows: usize,
    quiet: bool,
    f: &dyn Fn(&crate::bench::report::RateSample) -> f64,
) -> f64 {
    // Quiet: bridgewall's quiet samples at any rule count (its per-packet path does not
    // depend on the rules: a verdict is cached per flow); the kernel paths run in softirq
    // and are taken as they are.
    let quiet_bw = quiet && path == "bridgewall";
    median_of(
        &r.rate,
        |x| {
            x.path == path
                && (x.rules == rules || path == "bridge" || quiet_bw)
                && x.size == size
                && x.flows == flows
                && (!quiet_bw || x.other_cores < QUIET_OTHER_CORES)
        },
        f,
    )
}

/// The targets, computed from the samples (all, and quiet ones only).
fn targets(s: &mut String, r: &Report) {
    let has = |p: &str| r.rate.iter().any(|x| x.path == p);
    if !has("bridgewall") {
        return;
    }
    let rules = &r.settings.rules;
    let at = |want: usize| rules.contains(&want).then_some(want);
    let (size, flows) = (
        if r.settings.sizes.contains(&64) {
            64
        } else {
            r.settings.sizes[0]
        },
        if r.settings.flows.contains(&1000) {
            1000
        } else {
            r.settings.flows[0]
        },
    );
    let bw_n = r.rate.iter().filter(|x| x.path == "bridgewall").count();
    let quiet_n = r
        .rate
        .iter()
        .filter(|x| x.path == "bridgewall" && x.other_cores < QUIET_OTHER_CORES)
        .count();
    let _ = writeln!(
        s,
        "\n## Targets ({size} B, {flows} flows; all samples / quiet samples only)\n"
    );
    let _ = writeln!(
        s,
        "Quiet only: bridgewall's samples taken while the cores busy outside this process were < {QUIET_OTHER_CORES} ({quiet_n} of its {bw_n} samples), at any rule count (its per-packet work does not depend on the rules: the verdict is cached per flow), against the kernel paths' samples as they are (they run in softirq, which other work does not preempt). CPU is this process's (generator + dataplane threads, softirq in their context) per delivered packet.\n"
    );
    let _ = writeln!(s, "| target | all samples | quiet only |\n|---|---|---|");
    let pps = |x: &crate::bench::report::RateSample| x.pps;
    let cpu = |x: &crate::bench::report::RateSample| x.process_ns_per_pkt;
    let ratio = |a: f64, b: f64| {
        if a.is_finite() && b.is_finite() && b > 0.0 {
            format!("{:.1}×", a / b)
        } else {
            "–".into()
        }
    };
    if let Some(n) = at(1000).filter(|_| has("docker-nft")) {
        for (label, f, inv) in [
            (
                "packets/s vs docker-nft at 1,000 rules (≥ 8×)",
                &pps as &dyn Fn(&crate::bench::report::RateSample) -> f64,
                false,
            ),
            (
                "less CPU per packet than docker-nft at 1,000 rules (≥ 3×)",
                &cpu,
                true,
            ),
        ] {
            let cell = |quiet: bool| {
                let bw = rate_median(r, "bridgewall", n, size, flows, quiet, f);
                let nft = rate_median(r, "docker-nft", n, size, flows, quiet, f);
                if inv { ratio(nft, bw) } else { ratio(bw, nft) }
            };
            let _ = writeln!(s, "| {label} | {} | {} |", cell(false), cell(true));
        }
    }
    if let (Some(lo), Some(hi)) = (at(10), at(10000)) {
        let all = {
            let a = rate_median(r, "bridgewall", lo, size, flows, false, &pps);
            let b = rate_median(r, "bridgewall", hi, size, flows, false, &pps);
            if a.is_finite() && b.is_finite() && a > 0.0 {
                format!("{:.0}%", 100.0 * b / a)
            } else {
                "–".into()
            }
        };
        let quiet_at = |n: usize| {
            median_of(
                &r.rate,
                |x| {
                    x.path == "bridgewall"
                        && x.rules == n
                        && x.size == size
                        && x.other_cores < QUIET_OTHER_CORES
                },
                |x| x.pps,
            )
        };
        let (q10, q10k) = (quiet_at(lo), quiet_at(hi));
        let quiet_cell = if q10.is_finite() && q10k.is_finite() && q10 > 0.0 {
            format!("{:.0}% (every flow count)", 100.0 * q10k / q10)
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| bridgewall at 10,000 rules, share of its 10-rule packets/s (≥ 90%) | {all} | {quiet_cell} |"
        );
    }
    let best = |quiet: bool| {
        let v: Vec<f64> = r
            .rate
            .iter()
            .filter(|x| {
                x.path == "bridgewall"
                    && x.size == 64
                    && x.flows == flows
                    && (!quiet || x.other_cores < QUIET_OTHER_CORES)
            })
            .map(|x| x.pps)
            .collect();
        let (m, _, hi) = summary(&v);
        if m.is_nan() {
            "–".into()
        } else {
            format!("{:.0} kpps (best {:.0})", m / 1e3, hi / 1e3)
        }
    };
    let _ = writeln!(
        s,
        "| bridgewall 64 B, one dataplane core (≥ 1 Mpps), every rule count | {} | {} |",
        best(false),
        best(true)
    );
    let lat = |p: &str| median_of(&r.latency, |x| x.path == p, |x| x.p99_us);
    if !r.latency.is_empty() {
        let _ = writeln!(
            s,
            "| latency p99, bridgewall vs bridge (no worse) | {:.0} vs {:.0} µs | |",
            lat("bridgewall"),
            lat("bridge")
        );
    }
    let tcp = |p: &str| median_of(&r.tcp, |x| x.path == p, |x| x.gbps);
    if !r.tcp.is_empty() {
        let (a, b) = (tcp("bridgewall"), tcp("bridge"));
        let _ = writeln!(
            s,
            "| TCP bulk, bridgewall vs bridge (≥ 100%) | {:.0}% ({a:.2} vs {b:.2} Gbit/s) | |",
            100.0 * a / b
        );
    }
    let nf = |p: &str| median_of(&r.new_flows, |x| x.path == p, |x| x.tcp_per_s);
    if !r.new_flows.is_empty() {
        let _ = writeln!(
            s,
            "| new TCP flows/s, bridgewall vs docker-nft (≥) | {:.0} vs {:.0} | |",
            nf("bridgewall"),
            nf("docker-nft")
        );
    }
}

/// The median of `value` over the samples `keep` selects (NaN when none).
fn median_of<T>(samples: &[T], keep: impl Fn(&T) -> bool, value: impl Fn(&T) -> f64) -> f64 {
    let v: Vec<f64> = samples.iter().filter(|x| keep(x)).map(value).collect();
    summary(&v).0
}
