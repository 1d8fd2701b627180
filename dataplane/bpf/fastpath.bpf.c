// SPDX-License-Identifier: GPL-2.0
/*
 * bridgewall's in-kernel fast path (issue 9, tiered datapath).
 *
 * A tc/TCX ingress classifier on every container's host-side veth and on the gateway
 * veth. Frames of an admitted flow (an entry in bw_flows, installed by the userspace
 * engine) are forwarded here, in the kernel, keeping GSO skbs whole; everything else is
 * "upcalled": prefixed with a 14-byte tag and redirected to the egress of bridgewall's
 * upcall veth, whose peer carries the AF_XDP socket of the engine.
 *
 * The ABI (map names, key/value layouts, tag layout, reason codes, stats indexes) is
 * mirrored in dataplane/src/afxdp/fastpath/abi.rs: change both or neither.
 *
 * Build: dataplane/bpf/build.sh (clang 14, -target bpf). The object is committed.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* ---- ABI: keep in sync with abi.rs ---- */

struct bw_port {
	__u16 port;           /* ingress port id */
	__u16 flags;          /* reserved, 0 */
	__u32 upcall_ifindex; /* where this port's upcalls go */
};

struct bw_flow_key {
	__u16 port;  /* ingress port id */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 pad;    /* 0 */
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u8 src[16]; /* IPv6, or IPv4-mapped ::ffff:a.b.c.d */
	__u8 dst[16];
};

struct bw_flow {
	__u32 action;      /* BW_ACT_* */
	__u32 out_ifindex;
	__u32 out_mode;    /* BW_OUT_* */
	__u32 generation;  /* policy generation the entry was admitted under */
	__u64 packets;
	__u64 bytes;
	__u64 last_seen_ns; /* bpf_ktime_get_ns() */
	__u32 tcp_flags;    /* OR of the TCP flags bytes seen */
	__u32 pad;
};

struct bw_config {
	__u32 generation; /* current policy generation (low 32 bits) */
	__u32 flags;      /* reserved, 0 */
};

#define BW_ACT_FORWARD 1
#define BW_ACT_DROP 2

#define BW_OUT_PEER 1   /* bpf_redirect_peer: into the container's namespace */
#define BW_OUT_EGRESS 2 /* bpf_redirect: egress of the device */

#define BW_REASON_MISS 1
#define BW_REASON_UNPARSED 2
#define BW_REASON_TCP_FLAGS 3
#define BW_REASON_STALE 4
#define BW_REASON_TRUNCATED 5

enum bw_stat {
	BW_STAT_FORWARDED = 0,
	BW_STAT_FORWARDED_BYTES = 1,
	BW_STAT_DROPPED = 2,
	BW_STAT_UPCALL_MISS = 3,
	BW_STAT_UPCALL_UNPARSED = 4,
	BW_STAT_UPCALL_FLAGS = 5,
	BW_STAT_UPCALL_STALE = 6,
	BW_STAT_UPCALL_FAILED = 7,
	BW_STAT_REDIRECT_FAILED = 8,
	BW_STAT_UNKNOWN_PORT = 9,
	BW_STAT_UPCALL_TRUNCATED = 10,
	BW_STAT_SLOTS = 16,
};

#define BW_TAG_LEN 14
#define BW_TAG_ETHERTYPE 0x88B5

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct bw_port);
} bw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* overridden at load time */
	__type(key, struct bw_flow_key);
	__type(value, struct bw_flow);
} bw_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bw_config);
} bw_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BW_STAT_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} bw_stats SEC(".maps");

/* ---- wire constants ---- */

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_MIN_HLEN 20
#define UDP_HLEN 8
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

/* Ethernet + IPv6 + TCP: the most any parse below reads. */
#define PARSE_MAX (ETH_HLEN + IPV6_HLEN + TCP_MIN_HLEN)

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&bw_stats, &idx);
	if (v)
		*v += n; /* per CPU: no atomics needed */
}

/* Tags the frame and sends it to the upcall veth; the original frame follows the tag
 * byte for byte. */
static __always_inline int upcall(struct __sk_buff *skb, __u16 port, __u32 upcall_ifindex,
				  __u8 reason, __u32 stat)
{
	stat_add(stat, 1);
	if (bpf_skb_change_head(skb, BW_TAG_LEN, 0))
		goto failed;
	__u8 tag[BW_TAG_LEN] = {
		0x02, 0x62, 0x77, 0x75, 0x70, 0x00, /* dst MAC 02:62:77:75:70:00 */
		(__u8)(port >> 8), (__u8)port,      /* ingress port id, big-endian */
		reason, 0, 0, 0,
		(__u8)(BW_TAG_ETHERTYPE >> 8), (__u8)BW_TAG_ETHERTYPE,
	};
	if (bpf_skb_store_bytes(skb, 0, tag, BW_TAG_LEN, 0))
		goto failed;
	long r = bpf_redirect(upcall_ifindex, 0);
	if (r != TC_ACT_REDIRECT)
		goto failed;
	return TC_ACT_REDIRECT;
failed:
	stat_add(BW_STAT_UPCALL_FAILED, 1);
	return TC_ACT_SHOT;
}

/* Wire packets an skb stands for: a GSO skb is counted as the segments it becomes. */
static __always_inline __u64 segments(struct __sk_buff *skb)
{
	__u32 n = skb->gso_segs;
	return n ? n : 1;
}

static __always_inline void stamp(struct bw_flow *f, __u64 packets, __u64 len, __u8 tcp_flags)
{
	__sync_fetch_and_add(&f->packets, packets);
	__sync_fetch_and_add(&f->bytes, len);
	f->last_seen_ns = bpf_ktime_get_ns();
	if (tcp_flags)
		__sync_fetch_and_or(&f->tcp_flags, (__u32)tcp_flags);
}

/* One upcall site for the whole program (keeps the instruction count down). */
#define UPCALL(r, s)            \
	do {                    \
		reason = (r);   \
		stat = (s);     \
		goto do_upcall; \
	} while (0)

SEC("classifier")
int bw_fastpath(struct __sk_buff *skb)
{
	__u8 reason;
	__u32 stat;
	__u32 ifindex = skb->ifindex;
	struct bw_port *p = bpf_map_lookup_elem(&bw_ports, &ifindex);
	if (!p) {
		stat_add(BW_STAT_UNKNOWN_PORT, 1);
		return TC_ACT_SHOT; /* fail closed */
	}
	__u16 port = p->port;
	__u32 up = p->upcall_ifindex;

	if (skb->vlan_present)
		UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);

	/* Headers outside the linear area: pull what the parse reads. */
	__u32 len = skb->len;
	if ((long)skb->data_end - (long)skb->data < PARSE_MAX && len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, len < PARSE_MAX ? len : PARSE_MAX);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *eth = data;
	if ((void *)(eth + ETH_HLEN) > data_end)
		UPCALL(BW_REASON_TRUNCATED, BW_STAT_UPCALL_TRUNCATED);
	/* Multicast and broadcast destinations (I/G bit) go to the switch. */
	if (eth[0] & 1)
		UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);
	__u16 ethertype = ((__u16)eth[12] << 8) | eth[13];

	struct bw_flow_key key = {};
	key.port = port;
	__u8 *l4;
	if (ethertype == ETH_P_IP) {
		__u8 *ip = eth + ETH_HLEN;
		if ((void *)(ip + IPV4_HLEN) > data_end)
			UPCALL(BW_REASON_TRUNCATED, BW_STAT_UPCALL_TRUNCATED);
		if (ip[0] != 0x45) /* version 4, no options */
			UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);
		__u16 frag = ((__u16)ip[6] << 8) | ip[7];
		if (frag & (IP_MF | IP_OFFSET))
			UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);
		key.proto = ip[9];
		key.src[10] = 0xff;
		key.src[11] = 0xff;
		__builtin_memcpy(&key.src[12], ip + 12, 4);
		key.dst[10] = 0xff;
		key.dst[11] = 0xff;
		__builtin_memcpy(&key.dst[12], ip + 16, 4);
		l4 = ip + IPV4_HLEN;
	} else if (ethertype == ETH_P_IPV6) {
		__u8 *ip6 = eth + ETH_HLEN;
		if ((void *)(ip6 + IPV6_HLEN) > data_end)
			UPCALL(BW_REASON_TRUNCATED, BW_STAT_UPCALL_TRUNCATED);
		if ((ip6[0] >> 4) != 6)
			UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);
		key.proto = ip6[6]; /* next header: must be TCP or UDP directly */
		__builtin_memcpy(key.src, ip6 + 8, 16);
		__builtin_memcpy(key.dst, ip6 + 24, 16);
		l4 = ip6 + IPV6_HLEN;
	} else {
		/* ARP, VLAN (0x8100/0x88a8) and everything else. */
		UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);
	}

	__u8 tcp_flags = 0;
	if (key.proto == PROTO_TCP) {
		if ((void *)(l4 + TCP_MIN_HLEN) > data_end)
			UPCALL(BW_REASON_TRUNCATED, BW_STAT_UPCALL_TRUNCATED);
		tcp_flags = l4[13];
	} else if (key.proto == PROTO_UDP) {
		if ((void *)(l4 + UDP_HLEN) > data_end)
			UPCALL(BW_REASON_TRUNCATED, BW_STAT_UPCALL_TRUNCATED);
	} else {
		/* ICMP, extension headers, everything else. */
		UPCALL(BW_REASON_UNPARSED, BW_STAT_UPCALL_UNPARSED);
	}
	key.sport = ((__u16)l4[0] << 8) | l4[1];
	key.dport = ((__u16)l4[2] << 8) | l4[3];

	struct bw_flow *f = bpf_map_lookup_elem(&bw_flows, &key);
	if (!f)
		UPCALL(BW_REASON_MISS, BW_STAT_UPCALL_MISS);

	__u32 zero = 0;
	struct bw_config *cfg = bpf_map_lookup_elem(&bw_config, &zero);
	__u32 generation = cfg ? cfg->generation : 0;
	if (f->generation != generation)
		UPCALL(BW_REASON_STALE, BW_STAT_UPCALL_STALE);

	__u64 packets = segments(skb);
	if (f->action == BW_ACT_DROP) {
		stamp(f, packets, len, tcp_flags);
		stat_add(BW_STAT_DROPPED, packets);
		return TC_ACT_SHOT;
	}
	if (f->action != BW_ACT_FORWARD)
		/* An action this program does not know: let the engine decide. */
		UPCALL(BW_REASON_MISS, BW_STAT_UPCALL_MISS);

	/* Connection tracking must see opening and closing segments. */
	if (tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST))
		UPCALL(BW_REASON_TCP_FLAGS, BW_STAT_UPCALL_FLAGS);

	__u32 out_ifindex = f->out_ifindex;
	__u32 mode = f->out_mode;
	stamp(f, packets, len, tcp_flags);
	long r;
	if (mode == BW_OUT_PEER)
		r = bpf_redirect_peer(out_ifindex, 0);
	else if (mode == BW_OUT_EGRESS)
		r = bpf_redirect(out_ifindex, 0);
	else
		r = TC_ACT_SHOT;
	if (r != TC_ACT_REDIRECT) {
		stat_add(BW_STAT_REDIRECT_FAILED, 1);
		return TC_ACT_SHOT;
	}
	stat_add(BW_STAT_FORWARDED, packets);
	stat_add(BW_STAT_FORWARDED_BYTES, len);
	return TC_ACT_REDIRECT;

do_upcall:
	return upcall(skb, port, up, reason, stat);
}

char _license[] SEC("license") = "GPL";
