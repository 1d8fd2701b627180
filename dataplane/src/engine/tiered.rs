//! The engine's half of the tiered datapath (see [`crate::offload`]): upcalled frames in,
//! kernel flow-cache requests out, the kernel's activity back into the flow table.
use super::{Engine, Pending, Resolved};
use crate::counters::DropReason;
use crate::flow::{ConnState, Dir, FlowEntry, NOT_OFFLOADED, Verdict};
use crate::offload::{KernelSeen, OffloadLog, OffloadOp, OffloadTarget, PortRole, reversed, tag};
use crate::phy::{DescBatch, FrameDesc, FrameMemory, PortId};
use crate::policy::{FlowState, MAX_BATCH, PacketRecord, RULE_FAIL_CLOSED};
use crate::wire::Tuple;
use rules_wasm::abi::proto;

/// Room for kernel flow-cache requests between two drains by the worker (a round handles at
/// most a few batches of 64 frames; each can ask for two entries and remove two).
const OFFLOAD_LOG_CAPACITY: usize = 8192;

/// TCP ACK, what a synced kernel entry advances its flow with (the kernel upcalls SYN, FIN
/// and RST, so the packets it forwarded carried none of them).
const TCP_ACK: u8 = 0x10;

impl<M: FrameMemory> Engine<M> {
    /// Says what port `id` is to the tiered datapath (registered with [`Engine::add_port`]
    /// before or after). The first port that is not [`PortRole::Plain`] turns the kernel
    /// flow-cache request log on (allocates: control path).
    pub fn set_port_role(&mut self, id: PortId, role: PortRole) {
        if let Some(r) = self.roles.get_mut(usize::from(id)) {
            *r = role;
        }
        if role != PortRole::Plain {
            self.flows.enable_offload(OFFLOAD_LOG_CAPACITY);
        }
    }

    /// What port `id` is to the tiered datapath.
    pub fn port_role(&self, id: PortId) -> PortRole {
        self.roles.get(usize::from(id)).copied().unwrap_or_default()
    }

    /// Where the kernel sends packets leaving by `port`, if the kernel fast path serves it.
    #[inline]
    fn kernel_target(&self, port: PortId) -> Option<OffloadTarget> {
        match self.roles.get(usize::from(port)) {
            Some(PortRole::Tiered(t)) if self.ports[usize::from(port)].is_some() => Some(*t),
            _ => None,
        }
    }

    /// The requests for the kernel flow cache recorded so far; the worker applies them and
    /// clears the log.
    pub fn offload_log(&mut self) -> &mut OffloadLog {
        self.flows.offload_log()
    }

    /// The generation of the policy in force (kernel entries of another one are stale).
    pub fn policy_generation(&self) -> u64 {
        self.policy.generation()
    }

    /// Frames received on the upcall port: each carries a tag naming the port it entered
    /// by; stripped of it, runs of frames of one port are processed as received there. A
    /// frame without a valid tag is dropped (counted as from an unknown port).
    pub(super) fn process_upcalls(&mut self, now: u64, mem: &mut M, rx: &mut DescBatch) {
        self.counters.offload.upcalls.add(rx.len() as u64);
        let mut run = DescBatch::default();
        let mut run_port: PortId = 0;
        for &d in rx.as_slice() {
            let from = tag::read(mem.bytes(d.addr, d.len as usize))
                .map(|(port, _)| port)
                .filter(|&p| {
                    self.ports.get(usize::from(p)).is_some_and(Option::is_some)
                        && self.port_role(p) != PortRole::Upcall
                });
            let Some(port) = from else {
                // No container's frame (e.g. the upcall veth's own IPv6 chatter): counted in
                // the totals, not as the upcall port's.
                self.counters.offload.upcalls_untagged.add(1);
                self.drop_frame_from(d, DropReason::UnknownPort, None);
                continue;
            };
            if port != run_port && !run.is_empty() {
                self.process(now, run_port, mem, &mut run);
            }
            run_port = port;
            let inner = FrameDesc {
                addr: d.addr + tag::LEN as u64,
                len: d.len - tag::LEN as u32,
            };
            // `rx` holds at most a batch, so the run never overflows.
            let _ = run.push(inner);
        }
        if !run.is_empty() {
            self.process(now, run_port, mem, &mut run);
        }
        rx.clear();
    }

    /// Asks for kernel entries of the flow in `slot` (both directions) when it has become
    /// offloadable: admitted by the policy in force (not only by audit mode), a TCP
    /// connection past its handshake or a UDP flow past its first exchange (`hit`: the
    /// packet that found the flow, with the flow's state before it and its direction),
    /// between two ports the kernel fast path serves, and not already offloaded with this
    /// verdict. No room in the log: the flow's next packet tries again.
    #[inline]
    pub(super) fn maybe_offload(&mut self, slot: usize, hit: Option<(ConnState, Dir)>) {
        if !self.flows.offload_enabled() {
            return;
        }
        let e = self.flows.entry(slot);
        let settled = match (e.state, hit) {
            (ConnState::TcpEstablished, _) => e.confirmed(),
            // UDP: once it is more than one exchange — a packet after a request and its
            // reply, or the originator's second packet unanswered — so a lone datagram or a
            // single request/reply (a DNS lookup) costs no kernel entries. A reply the
            // kernel forwards later assures the flow at the next sync.
            (ConnState::UdpAssured | ConnState::UdpUnreplied, Some((before, dir))) => {
                before == ConnState::UdpAssured
                    || (before == ConnState::UdpUnreplied && dir == Dir::Original)
            }
            _ => false,
        };
        if settled && e.offloaded != e.generation {
            self.install_entries(slot);
        }
    }

    /// Kernel entries for both directions of the flow in `slot`, with its generation, if it
    /// is admitted by the policy in force (not only by audit mode), not one-way, not
    /// hairpinned through the host, and between two ports the kernel fast path serves. No
    /// room in the log: the flow's next packet tries again.
    fn install_entries(&mut self, slot: usize) {
        let e = *self.flows.entry(slot);
        if !e.verdict.accept || e.audited || e.via_host || e.one_way {
            return;
        }
        let (Some(a), Some(b)) = (
            self.kernel_target(e.ports[0]),
            self.kernel_target(e.ports[1]),
        ) else {
            return;
        };
        let log = self.flows.offload_log();
        if !log.has_room(2) {
            log.refuse();
            return;
        }
        let orig = e.original_tuple();
        log.push(OffloadOp::Forward {
            in_port: e.ports[0],
            tuple: orig,
            out: b,
            generation: e.generation,
        });
        log.push(OffloadOp::Forward {
            in_port: e.ports[1],
            tuple: reversed(&orig),
            out: a,
            generation: e.generation,
        });
        self.flows.mark_offloaded(slot, e.generation);
        self.counters.offload.installed.add(1);
    }

    /// After a denial was cached in `slot`: a drop entry in the kernel for the packets of
    /// the denied direction, so a flood of them never reaches the engine. Only for a packet
    /// travelling the flow's original direction: a re-decision noticed by a reply denies
    /// the flow as its originator opened it, while the replier's own packets are judged on
    /// their own (and must not be dropped in the kernel). Not for rejects (each packet is
    /// answered), audited denials, ICMP (always upcalled) or a packet that came back
    /// through the host.
    pub(super) fn offload_denial(
        &mut self,
        slot: usize,
        p: &Pending,
        r: &Resolved,
        in_port: PortId,
    ) {
        if r.admit || p.from != in_port {
            return;
        }
        self.offload_drop(slot, p.from, &p.tracking.tuple);
    }

    /// A drop entry for the denied flow in `slot`, whose packet `tuple` entered by
    /// `in_port`, if that packet travels the flow's original direction and nothing needs to
    /// see the flow's packets (no reject to answer, not audit mode, TCP or UDP, a port the
    /// kernel fast path serves). Also for a flow denied by a re-decision: its packets come up
    /// once (a miss) and stay down from then on.
    pub(super) fn offload_drop(&mut self, slot: usize, in_port: PortId, tuple: &Tuple) {
        if !self.flows.offload_enabled() {
            return;
        }
        let e = *self.flows.entry(slot);
        if e.verdict.accept
            || e.verdict.reject.is_some()
            || self.audit_now
            || e.ports[0] != in_port
            || *tuple != e.original_tuple()
            || e.offloaded == e.generation
            || !matches!(tuple.proto, proto::TCP | proto::UDP)
            || self.kernel_target(in_port).is_none()
        {
            return;
        }
        if self.flows.offload_log().push(OffloadOp::Drop {
            in_port,
            tuple: *tuple,
            generation: e.generation,
        }) {
            self.flows.mark_offloaded(slot, e.generation);
        }
    }

    /// Audit mode changed: kernel drop entries would keep dropping what audit mode admits
    /// (or, once it is off, flows only audit admitted are re-decided at their next packet,
    /// which needs no kernel change). Removes the drop entries (a full scan: rare).
    pub(super) fn audit_flipped(&mut self) {
        for s in 0..self.flows.capacity() {
            if self.flows.slot_live(s) {
                let e = self.flows.entry(s);
                if e.offloaded != NOT_OFFLOADED && !e.verdict.accept {
                    self.flows.unoffload(s);
                }
            }
        }
    }

    /// What the kernel saw of one of its entries since the last sync: refreshes the flow
    /// (its timeout, its state with the direction's traffic) and counts the packets by port
    /// and rule as if they had crossed the engine. False when the engine does not own the
    /// entry (no such flow, not offloaded, another port): the caller removes it.
    pub fn kernel_seen(&mut self, seen: &KernelSeen, now: u64) -> bool {
        let Some(net) = self
            .ports
            .get(usize::from(seen.in_port))
            .and_then(Option::as_ref)
            .map(|p| p.network)
        else {
            return false;
        };
        let hk = self.flows.hash_tuple_in(&seen.tuple, net);
        let Some(slot) = self.flows.lookup(&hk, now) else {
            return false;
        };
        let e = *self.flows.entry(slot);
        if e.offloaded == NOT_OFFLOADED || !e.ports.contains(&seen.in_port) {
            return false;
        }
        if seen.packets == 0 {
            return true;
        }
        let c = &self.counters;
        if seen.dropped {
            c.count_drops_at(DropReason::FlowDenied, seen.in_port, seen.packets);
            c.offload.kernel_dropped.add(seen.packets);
            return true;
        }
        c.offload.kernel_forwarded.add(seen.packets);
        c.offload.kernel_forwarded_bytes.add(seen.bytes);
        c.rule_traffic_n(e.verdict.rule, seen.packets, seen.bytes);
        if let Some(pc) = c.port(seen.in_port) {
            pc.rx_packets.add(seen.packets);
            pc.rx_bytes.add(seen.bytes);
        }
        let out = if seen.in_port == e.ports[0] {
            e.ports[1]
        } else {
            e.ports[0]
        };
        if let Some(pc) = c.port(out) {
            pc.tx_packets.add(seen.packets);
            pc.tx_bytes.add(seen.bytes);
        }
        let at = seen.last_seen.unwrap_or(now).min(now);
        if e.verdict.accept && at > e.last_seen {
            let flags = if e.key.proto == proto::TCP {
                TCP_ACK
            } else {
                0
            };
            self.flows.on_packet(slot, e.dir(hk.src_is_a), flags, at);
        }
        true
    }

    /// Re-decides every offloaded flow with the policy in force (call it right after a
    /// swap, between batches): each admitted flow keeps its kernel entries, updated to the
    /// new generation, or loses them when the new policy denies it (the flow is then denied
    /// in the engine too, so its next packet — upcalled as a miss — is dropped). Kernel drop
    /// entries are removed: their flows are asked again at their next packet. Without this
    /// every offloaded flow would be upcalled once after a swap; with it, only those whose
    /// verdict changed are. A full scan of the flow table and one policy call per 64 flows.
    pub fn revalidate_offloaded(&mut self, now: u64) {
        if !self.flows.offload_log().enabled() || self.batch.len != 0 {
            return;
        }
        let generation = self.policy.generation();
        let mut slots = [0usize; MAX_BATCH];
        let mut n = 0;
        for s in 0..self.flows.capacity() {
            if !self.flows.slot_live(s) {
                continue;
            }
            let e = *self.flows.entry(s);
            if e.offloaded == NOT_OFFLOADED || e.generation == generation || e.expires_at <= now {
                continue;
            }
            if !e.verdict.accept {
                self.flows.unoffload(s);
                continue;
            }
            self.batch.records[n] = self.offloaded_record(&e, now);
            slots[n] = s;
            n += 1;
            if n == MAX_BATCH {
                self.revalidate_batch(&slots[..n], generation, now);
                n = 0;
            }
        }
        if n > 0 {
            self.revalidate_batch(&slots[..n], generation, now);
        }
    }

    /// Decides `slots.len()` records prepared in the batch and applies the verdicts.
    fn revalidate_batch(&mut self, slots: &[usize], generation: u64, now: u64) {
        self.decide_timed(slots.len());
        for (i, &s) in slots.iter().enumerate() {
            let e = *self.flows.entry(s);
            let r = self.resolve(self.batch.verdicts[i], e.ports[0]);
            self.counters.flows.redecisions.add(1);
            if !r.admit && r.verdict.rule == RULE_FAIL_CLOSED {
                // A failed module's batch: no verdict to trust. The packets come back to the
                // engine, whose next call decides them.
                self.flows.unoffload(s);
                continue;
            }
            let verdict = Verdict {
                accept: r.admit,
                rule: r.verdict.rule,
                reject: r.reject(),
            };
            self.flows.redecide_slot(s, verdict, generation, now);
            self.flows.mark_audited(s, r.audited);
            if r.audited {
                self.flows.unoffload(s);
            } else if r.admit {
                // Offloaded before, so settled: its entries move to the new generation.
                self.install_entries(s);
            } else {
                // Denied now: its originator's packets are dropped in the kernel from here on.
                self.offload_drop(s, e.ports[0], &e.original_tuple());
            }
        }
    }

    /// The record a re-decision of offloaded flow `e` presents: the flow as its originator
    /// opened it, Established (as [`Engine::redecide_record`] does for a packet).
    fn offloaded_record(&mut self, e: &FlowEntry, now: u64) -> PacketRecord {
        let t = e.original_tuple();
        let v4 = t.src[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        let src_conns = if self.policy.counts_source_conns() {
            // The flow is among its source's connections already.
            self.flows.conns_from(&t.src, now).saturating_sub(1)
        } else {
            0
        };
        PacketRecord {
            src: t.src,
            dst: t.dst,
            src_port: t.src_port,
            dst_port: t.dst_port,
            ip_version: if v4 { 4 } else { 6 },
            protocol: t.proto,
            tcp_flags: 0,
            flow_state: FlowState::Established,
            in_port: e.ports[0],
            out_port: e.ports[1],
            icmp_type: 0,
            icmp_code: 0,
            src_conns,
        }
    }
}
