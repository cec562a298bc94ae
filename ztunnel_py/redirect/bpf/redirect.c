/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Transparent TCP capture for one pod: two tc programs attached (clsact, direct-action) to
 * the pod's interface inside the pod's network namespace, and a socket lookup program linked
 * to that namespace. Compiled by bcc into a bytecode bundle (see redirect/bundle.py), which the agent loads; the
 * same programs serve every pod, found
 * in zt_pods by its IP (the destination of inbound packets, the source of outbound and
 * hairpinned ones).
 *
 * zt_ingress (packets arriving on the pod's interface):
 *   - hairpinned by zt_egress (they carry ZT_ROUTE_MARK): the type is set to PACKET_HOST (the
 *     destination MAC is the gateway's); packets of existing flows go to normal demux, which
 *     the fwmark rule routes to the local table; a new SYN is assigned to the agent's 15001,
 *     except a SYN on the tuple of a TIME_WAIT socket, which zt_lookup serves (see there).
 *   - to a pod IP: a pod IP as source is a spoof (dropped: accept_local=1 would admit it);
 *     existing flows (the app's or the agent's sockets, found by the packet's own tuple;
 *     listeners and, for SYNs, TIME_WAIT do not count) go to normal demux; the probe source
 *     and excluded ports pass; everything else is assigned to 15008 (dport 15008) or 15006,
 *     again except a SYN on the tuple of a TIME_WAIT socket, which zt_lookup serves.
 *   - fail closed: no listener, or a failed assign, drops the packet.
 *   - before Linux 6.5, where tc cannot assign the agent's SO_REUSEPORT listeners, every TCP
 *     packet it would assign is left to zt_lookup the same way (see zt_deliver).
 * zt_egress (packets leaving the pod's interface):
 *   - the agent's own packets (mark 0x539) pass untouched;
 *   - from a pod IP: replies to a local non-listening socket (the agent's transparent sockets)
 *     and new SYNs (no ACK) are hairpinned to ingress with bpf_redirect(BPF_F_INGRESS), except
 *     towards the probe source or an excluded port. Everything else passes.
 *
 * DNS (pods with ZT_FLAG_DNS_CAPTURE): UDP datagrams and new TCP connections from a pod IP to
 * port 53, anywhere, are hairpinned like new SYNs and assigned in zt_ingress to the agent's DNS
 * proxy sockets on 127.0.0.1:ZT_PORT_DNS (IPv6: [::1]), found by a socket lookup with that
 * destination (a TCP SYN on the tuple of a TIME_WAIT socket goes through zt_lookup, which
 * gives it the proxy's listener of its family); what happens next (the original destination
 * the proxy answers from) is the proxy's business. Unlike everything else, DNS fails open: zt_egress hairpins it only while
 * the proxy's socket of that protocol and family exists (the same lookup, made in the pod's
 * netns before the redirect), so with the agent down queries reach the pod's resolver
 * directly. A proxy socket that disappears between egress and ingress drops that one packet;
 * the client's retry then goes direct. TCP to other ports stays fail-closed.
 *
 * Only TCP (and DNS over UDP) is captured. IPv4 options and the IPv6 hop-by-hop, routing,
 * destination-options and authentication headers are skipped; TCP that cannot be inspected
 * (IPv4 fragments, an IPv6 fragment header in front of TCP, more than ZT_MAX_EXT_HDRS extension
 * headers) to or from a pod IP is dropped rather than let through uncaptured. Fragmented UDP is
 * not inspected and passes. ESP is opaque and passes.
 */
#include <uapi/asm-generic/errno.h>
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_packet.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>

#include "redirect.h"

#define ZT_MAX_EXT_HDRS 4
#define ZT_IP_FRAGMENTED 0x3fff /* IP_MF | IP_OFFSET */
#define ZT_TCP_FLAG_SYN 0x02
#define ZT_TCP_FLAG_ACK 0x10
#define ZT_DNS_PORT 53

BPF_TABLE("hash", struct zt_addr, struct zt_pod_config, zt_pods, ZT_MAX_PODS * 2);
BPF_TABLE("hash", __u64, struct zt_pod_counters, zt_counters, ZT_MAX_PODS);
/* Each pod's agent listeners (15001, 15006, 15008, and the DNS proxy's TCP listener of each
 * family) by (pod id, port, family), for zt_lookup; the agent inserts them, and the kernel
 * removes an entry when its socket closes. */
BPF_TABLE("sockhash", struct zt_listener_key, __u32, zt_listeners, ZT_MAX_PODS * 5);
/* SYNs zt_ingress left to the kernel because their tuple belongs to a TIME_WAIT socket, and
 * the listener zt_lookup must give each (see there). An entry lives from the tc program to the
 * kernel's listener lookup for the same packet, microseconds; LRU, so it can never fill up.
 * The agent pins it like the others, so the tc and lookup programs share it even when only one
 * of them was replaced. */
BPF_TABLE("lru_hash", struct zt_flow, struct zt_reuse_entry, zt_reuse, 4096);
/* How long a zt_reuse entry is honoured: far more than the same packet's way from tc to the
 * listener lookup, far less than a client's SYN retransmission. */
#define ZT_REUSE_TTL_NS 100000000ULL

struct zt_packet {
    __u8 family;       /* 4 or 6; 0: not IP */
    __u8 tcp;          /* a TCP header was read */
    __u8 udp;          /* a UDP header was read (unfragmented datagrams only) */
    __u8 uninspectable; /* TCP (or possibly TCP) whose header cannot be read */
    __u8 flags;        /* TCP flags byte */
    __be16 sport;
    __be16 dport;
    __be32 saddr[4];   /* IPv4 in saddr[0] */
    __be32 daddr[4];
};

struct zt_ip6_ext {
    __u8 nexthdr;
    __u8 len;
};

static __always_inline int zt_read_tcp(struct __sk_buff *skb, __u32 off, struct zt_packet *p)
{
    __u8 hdr[14]; /* ports, seq, ack, data offset, flags */
    if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0) {
        p->uninspectable = 1;
        return 0;
    }
    __builtin_memcpy(&p->sport, &hdr[0], 2);
    __builtin_memcpy(&p->dport, &hdr[2], 2);
    p->flags = hdr[13];
    p->tcp = 1;
    return 0;
}

static __always_inline int zt_read_udp(struct __sk_buff *skb, __u32 off, struct zt_packet *p)
{
    __be16 ports[2];
    if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
        return 0;
    p->sport = ports[0];
    p->dport = ports[1];
    p->udp = 1;
    return 0;
}

static __always_inline int zt_parse4(struct __sk_buff *skb, struct zt_packet *p)
{
    struct iphdr ip;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        return 0;
    p->family = 4;
    p->saddr[0] = ip.saddr;
    p->daddr[0] = ip.daddr;
    if (ip.protocol == IPPROTO_UDP) {
        if (ip.frag_off & bpf_htons(ZT_IP_FRAGMENTED))
            return 0;
        return zt_read_udp(skb, ETH_HLEN + ip.ihl * 4, p);
    }
    if (ip.protocol != IPPROTO_TCP)
        return 0;
    if (ip.frag_off & bpf_htons(ZT_IP_FRAGMENTED)) {
        p->uninspectable = 1;
        return 0;
    }
    return zt_read_tcp(skb, ETH_HLEN + ip.ihl * 4, p);
}

static __always_inline int zt_parse6(struct __sk_buff *skb, struct zt_packet *p)
{
    struct ipv6hdr ip6;
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
        return 0;
    p->family = 6;
    __builtin_memcpy(p->saddr, &ip6.saddr, 16);
    __builtin_memcpy(p->daddr, &ip6.daddr, 16);
    __u8 nexthdr = ip6.nexthdr;
    __u32 off = ETH_HLEN + sizeof(ip6);
    struct zt_ip6_ext ext;
#pragma unroll
    for (int i = 0; i < ZT_MAX_EXT_HDRS; i++) {
        switch (nexthdr) {
        case IPPROTO_HOPOPTS:
        case IPPROTO_ROUTING:
        case IPPROTO_DSTOPTS:
            if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
                goto uninspectable;
            nexthdr = ext.nexthdr;
            off += (ext.len + 1) * 8;
            break;
        case IPPROTO_AH:
            if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
                goto uninspectable;
            nexthdr = ext.nexthdr;
            off += (ext.len + 2) * 4;
            break;
        case IPPROTO_FRAGMENT:
            if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
                goto uninspectable;
            if (ext.nexthdr == IPPROTO_TCP)
                goto uninspectable;
            return 0;
        case IPPROTO_TCP:
            return zt_read_tcp(skb, off, p);
        case IPPROTO_UDP:
            return zt_read_udp(skb, off, p);
        default:
            return 0; /* another upper-layer protocol, or ESP */
        }
    }
    if (nexthdr == IPPROTO_TCP)
        return zt_read_tcp(skb, off, p);
    if (nexthdr == IPPROTO_UDP)
        return zt_read_udp(skb, off, p);
    if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING && nexthdr != IPPROTO_DSTOPTS &&
        nexthdr != IPPROTO_AH && nexthdr != IPPROTO_FRAGMENT)
        return 0;
uninspectable:
    p->uninspectable = 1;
    return 0;
}

static __always_inline void zt_parse(struct __sk_buff *skb, struct zt_packet *p)
{
    if (skb->protocol == bpf_htons(ETH_P_IP))
        zt_parse4(skb, p);
    else if (skb->protocol == bpf_htons(ETH_P_IPV6))
        zt_parse6(skb, p);
}

static __always_inline struct zt_pod_config *zt_pod(const struct zt_packet *p,
                                                    const __be32 *addr)
{
    struct zt_addr key = {};
    if (p->family == 4) {
        key.a[2] = bpf_htonl(0xffff);
        key.a[3] = addr[0];
    } else {
        __builtin_memcpy(key.a, addr, 16);
    }
    return zt_pods.lookup(&key);
}

static __always_inline int zt_addr6_eq(const __be32 *a, const __be32 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int zt_is_pod_addr(const struct zt_pod_config *cfg,
                                          const struct zt_packet *p, const __be32 *addr)
{
    if (p->family == 4) {
#pragma unroll
        for (int i = 0; i < ZT_MAX_ADDRS; i++)
            if (i < cfg->n_ip4 && cfg->ip4[i] == addr[0])
                return 1;
        return 0;
    }
#pragma unroll
    for (int i = 0; i < ZT_MAX_ADDRS; i++)
        if (i < cfg->n_ip6 && zt_addr6_eq(cfg->ip6[i].w, addr))
            return 1;
    return 0;
}

static __always_inline int zt_is_probe(const struct zt_pod_config *cfg, const struct zt_packet *p,
                                       const __be32 *addr)
{
    if (p->family == 4)
        return cfg->probe_ip4 != 0 && cfg->probe_ip4 == addr[0];
    const __be32 *probe = cfg->probe_ip6.w;
    if (!(probe[0] | probe[1] | probe[2] | probe[3]))
        return 0;
    return zt_addr6_eq(probe, addr);
}

static __always_inline int zt_port_excluded(const struct zt_port_range *ranges, __u32 n,
                                            __be16 port_be)
{
    __u16 port = bpf_ntohs(port_be);
#pragma unroll
    for (int i = 0; i < ZT_MAX_PORT_RANGES; i++)
        if (i < n && port >= ranges[i].lo && port <= ranges[i].hi)
            return 1;
    return 0;
}

static __always_inline void zt_tuple(const struct zt_packet *p, struct bpf_sock_tuple *t,
                                     __be16 dport, __u32 *size)
{
    if (p->family == 4) {
        t->ipv4.saddr = p->saddr[0];
        t->ipv4.daddr = p->daddr[0];
        t->ipv4.sport = p->sport;
        t->ipv4.dport = dport;
        *size = sizeof(t->ipv4);
    } else {
        __builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
        __builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
        t->ipv6.sport = p->sport;
        t->ipv6.dport = dport;
        *size = sizeof(t->ipv6);
    }
}

static __always_inline int zt_is_syn(const struct zt_packet *p)
{
    return (p->flags & (ZT_TCP_FLAG_SYN | ZT_TCP_FLAG_ACK)) == ZT_TCP_FLAG_SYN;
}

/* The state of the local socket, other than a listener, that owns this packet's tuple, or
 * ZT_NO_SOCKET. */
#define ZT_NO_SOCKET 0xff
static __always_inline __u32 zt_owner_state(struct __sk_buff *skb, const struct zt_packet *p)
{
    struct bpf_sock_tuple t = {};
    __u32 size = 0;
    zt_tuple(p, &t, p->dport, &size);
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return ZT_NO_SOCKET;
    __u32 state = sk->state;
    bpf_sk_release(sk);
    return state == BPF_TCP_LISTEN ? ZT_NO_SOCKET : state;
}

/* Does a local socket own this packet's flow? TIME_WAIT does not count for a SYN, so a reused
 * tuple is captured again. */
static __always_inline int zt_existing_flow(struct __sk_buff *skb, const struct zt_packet *p)
{
    __u32 state = zt_owner_state(skb, p);
    if (state == ZT_NO_SOCKET)
        return 0;
    return !(state == BPF_TCP_TIME_WAIT && zt_is_syn(p));
}

static __always_inline void zt_count(__u64 *field)
{
    __sync_fetch_and_add(field, 1);
}

static __always_inline void zt_flow_addr(struct zt_addr *out, const struct zt_packet *p,
                                         const __be32 *addr)
{
    if (p->family == 4) {
        out->a[2] = bpf_htonl(0xffff);
        out->a[3] = addr[0];
    } else {
        __builtin_memcpy(out->a, addr, 16);
    }
}

/*
 * A SYN whose tuple belongs to a TIME_WAIT socket (the agent's end of an earlier connection
 * on the same tuple): assigning it to a listener here would make the kernel drop it as a
 * duplicate of that tuple, every retry, until the TIME_WAIT ends (60 s). Instead it goes to
 * normal demux, which finds the TIME_WAIT socket, retires it and looks up a listener; the
 * entry recorded here tells zt_lookup which of the pod's agent listeners answers. Without
 * room for the entry the SYN is dropped (the client retries), never left to the app.
 */
static __always_inline int zt_leave_to_lookup(const struct zt_packet *p,
                                              const struct zt_pod_config *cfg, __u16 port,
                                              struct zt_pod_counters *cnt)
{
    struct zt_flow key = {};
    zt_flow_addr(&key.remote, p, p->saddr);
    zt_flow_addr(&key.local, p, p->daddr);
    key.remote_port = bpf_ntohs(p->sport);
    key.local_port = bpf_ntohs(p->dport);
    struct zt_reuse_entry entry = {
        .pod_id = cfg->pod_id,
        .at_ns = bpf_ktime_get_ns(),
        .port = port,
        .ifindex = cfg->ifindex,
    };
    if (zt_reuse.update(&key, &entry)) {
        if (cnt)
            zt_count(&cnt->drops);
        return TC_ACT_SHOT;
    }
    return TC_ACT_OK;
}

/*
 * Deliver the packet to `sk` (referenced; released here), the agent's socket for `port`, or
 * drop it when there is none or the assign fails (fail closed).
 * Before Linux 6.5 (commit 9c02bec95954, "bpf, net: Support SO_REUSEPORT sockets with
 * bpf_sk_assign") the helper refuses a socket with SO_REUSEPORT (-ESOCKTNOSUPPORT), and the
 * agent's TCP listeners have it (a restarted agent binds beside the draining one). There a
 * TCP packet takes the socket lookup program's way instead (zt_leave_to_lookup), which assigns
 * the same listener and has accepted SO_REUSEPORT sockets since BPF_SK_LOOKUP came (5.9).
 * Newer kernels assign here.
 */
static __always_inline int zt_deliver(struct __sk_buff *skb, struct bpf_sock *sk,
                                      const struct zt_packet *p,
                                      const struct zt_pod_config *cfg, __u16 port,
                                      struct zt_pod_counters *cnt)
{
    long err = -1;
    if (sk) {
        err = bpf_sk_assign(skb, sk, 0);
        bpf_sk_release(sk);
    }
    if (err == -ESOCKTNOSUPPORT && p->tcp)
        return zt_leave_to_lookup(p, cfg, port, cnt);
    if (err) {
        if (cnt)
            zt_count(&cnt->drops);
        return TC_ACT_SHOT;
    }
    if (cnt) {
        zt_count(&cnt->assigns);
        if (port == ZT_PORT_INBOUND || port == ZT_PORT_HBONE)
            zt_count(&cnt->inbound);
    }
    return TC_ACT_OK;
}

/* Deliver the packet to the agent's listener on `port`, or drop it (fail closed). */
static __always_inline int zt_assign(struct __sk_buff *skb, const struct zt_packet *p,
                                     const struct zt_pod_config *cfg, __u16 port,
                                     struct zt_pod_counters *cnt)
{
    struct bpf_sock_tuple t = {};
    __u32 size = 0;
    zt_tuple(p, &t, bpf_htons(port), &size);
    struct bpf_sock *sk = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    if (sk && sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        sk = 0;
    }
    return zt_deliver(skb, sk, p, cfg, port, cnt);
}

/* DNS to be handed to the agent's proxy: UDP, or a new TCP connection, to port 53. */
static __always_inline int zt_is_dns(const struct zt_pod_config *cfg, const struct zt_packet *p)
{
    if (!(cfg->flags & ZT_FLAG_DNS_CAPTURE) || p->dport != bpf_htons(ZT_DNS_PORT))
        return 0;
    return p->udp || (p->tcp && zt_is_syn(p));
}

/* The agent's DNS proxy socket for this packet's protocol and family (127.0.0.1:ZT_PORT_DNS
 * or [::1]:ZT_PORT_DNS in the current netns), referenced; NULL when the agent has none. */
static __always_inline struct bpf_sock *zt_dns_socket(struct __sk_buff *skb,
                                                      const struct zt_packet *p)
{
    struct bpf_sock_tuple t = {};
    __u32 size = 0;
    zt_tuple(p, &t, bpf_htons(ZT_PORT_DNS), &size);
    if (p->family == 4) {
        t.ipv4.daddr = bpf_htonl(0x7f000001);
    } else {
        __builtin_memset(t.ipv6.daddr, 0, 16);
        t.ipv6.daddr[3] = bpf_htonl(1);
    }
    struct bpf_sock *sk;
    if (p->udp)
        sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    else
        sk = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    if (sk && p->tcp && sk->state != BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        return 0;
    }
    return sk;
}

/* Deliver hairpinned DNS to the agent's proxy, or drop it (its socket went away since egress
 * looked). */
static __always_inline int zt_assign_dns(struct __sk_buff *skb, const struct zt_packet *p,
                                         const struct zt_pod_config *cfg,
                                         struct zt_pod_counters *cnt)
{
    return zt_deliver(skb, zt_dns_socket(skb, p), p, cfg, ZT_PORT_DNS, cnt);
}

int zt_ingress(struct __sk_buff *skb)
{
    struct zt_packet p = {};
    zt_parse(skb, &p);
    if (!p.family)
        return TC_ACT_OK;

    if ((skb->mark & ZT_ROUTE_MARK_MASK) == ZT_ROUTE_MARK) {
        /* Hairpinned by zt_egress (marks never cross into the pod netns from outside). */
        struct zt_pod_config *cfg = zt_pod(&p, p.saddr);
        if (!cfg || !(p.tcp || p.udp))
            return TC_ACT_OK;
        struct zt_pod_counters *cnt = zt_counters.lookup(&cfg->pod_id);
        bpf_skb_change_type(skb, PACKET_HOST);
        if (p.udp)
            return zt_is_dns(cfg, &p) ? zt_assign_dns(skb, &p, cfg, cnt) : TC_ACT_OK;
        __u32 owner = zt_owner_state(skb, &p);
        if (!zt_is_syn(&p) || (owner != ZT_NO_SOCKET && owner != BPF_TCP_TIME_WAIT))
            return TC_ACT_OK;
        int dns = zt_is_dns(cfg, &p);
        if (owner == BPF_TCP_TIME_WAIT)
            return zt_leave_to_lookup(&p, cfg, dns ? ZT_PORT_DNS : ZT_PORT_OUTBOUND, cnt);
        if (dns)
            return zt_assign_dns(skb, &p, cfg, cnt);
        return zt_assign(skb, &p, cfg, ZT_PORT_OUTBOUND, cnt);
    }

    struct zt_pod_config *cfg = zt_pod(&p, p.daddr);
    if (!cfg)
        return TC_ACT_OK;
    struct zt_pod_counters *cnt = zt_counters.lookup(&cfg->pod_id);
    if (zt_is_pod_addr(cfg, &p, p.saddr)) {
        /* The pod's own IP as source from outside: accept_local=1 would let it in. */
        if (cnt)
            zt_count(&cnt->spoofed);
        return TC_ACT_SHOT;
    }
    if (p.uninspectable) {
        if (cnt)
            zt_count(&cnt->drops);
        return TC_ACT_SHOT;
    }
    if (!p.tcp)
        return TC_ACT_OK;
    if (zt_is_probe(cfg, &p, p.saddr)) {
        if (cnt)
            zt_count(&cnt->exempt);
        return TC_ACT_OK;
    }
    __u32 owner = zt_owner_state(skb, &p);
    if (owner != ZT_NO_SOCKET && !(owner == BPF_TCP_TIME_WAIT && zt_is_syn(&p)))
        return TC_ACT_OK;
    __u16 dport = bpf_ntohs(p.dport);
    if (dport != ZT_PORT_HBONE &&
        zt_port_excluded(cfg->in_excluded, cfg->n_in_excluded, p.dport)) {
        if (cnt)
            zt_count(&cnt->exempt);
        return TC_ACT_OK;
    }
    __u16 listener = dport == ZT_PORT_HBONE ? ZT_PORT_HBONE : ZT_PORT_INBOUND;
    if (owner == BPF_TCP_TIME_WAIT)
        return zt_leave_to_lookup(&p, cfg, listener, cnt);
    return zt_assign(skb, &p, cfg, listener, cnt);
}

int zt_egress(struct __sk_buff *skb)
{
    if ((skb->mark & ZT_AGENT_MARK_MASK) == ZT_AGENT_MARK)
        return TC_ACT_OK;
    struct zt_packet p = {};
    zt_parse(skb, &p);
    if (!p.family)
        return TC_ACT_OK;
    struct zt_pod_config *cfg = zt_pod(&p, p.saddr);
    if (!cfg)
        return TC_ACT_OK;
    struct zt_pod_counters *cnt = zt_counters.lookup(&cfg->pod_id);
    if (p.uninspectable) {
        if (cnt)
            zt_count(&cnt->drops);
        return TC_ACT_SHOT;
    }
    if (!p.tcp && !p.udp)
        return TC_ACT_OK;
    if (zt_is_dns(cfg, &p) && !zt_port_excluded(cfg->out_excluded, cfg->n_out_excluded, p.dport) &&
        (p.udp || !zt_existing_flow(skb, &p))) {
        /* Fail open: straight to the pod's resolver while the agent's proxy is missing. */
        struct bpf_sock *sk = zt_dns_socket(skb, &p);
        if (!sk) {
            if (cnt)
                zt_count(&cnt->exempt);
            return TC_ACT_OK;
        }
        bpf_sk_release(sk);
        goto hairpin;
    }
    if (!p.tcp)
        return TC_ACT_OK;
    if (zt_is_probe(cfg, &p, p.daddr)) {
        if (cnt)
            zt_count(&cnt->exempt);
        return TC_ACT_OK;
    }
    if (!zt_existing_flow(skb, &p)) {
        if (!zt_is_syn(&p))
            return TC_ACT_OK;
        if (zt_port_excluded(cfg->out_excluded, cfg->n_out_excluded, p.dport)) {
            if (cnt)
                zt_count(&cnt->exempt);
            return TC_ACT_OK;
        }
    }
hairpin:
    skb->mark = (skb->mark & ~ZT_ROUTE_MARK_MASK) | ZT_ROUTE_MARK;
    if (cnt)
        zt_count(&cnt->outbound);
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/*
 * zt_lookup (BPF_SK_LOOKUP, linked to each pod netns) answers the kernel's listener lookups
 * for the SYNs zt_ingress left to the kernel because their tuple belonged to a TIME_WAIT
 * socket (zt_leave_to_lookup; before Linux 6.5 also every TCP packet tc could not assign, see
 * zt_deliver): outbound ones hairpinned from the pod (DNS over TCP among them,
 * for the proxy's listener of the lookup's family), and inbound ones to the pod, from another
 * node or from a pod of this one. The kernel retired the TIME_WAIT socket and asks for a
 * listener; the answer is the agent's listener zt_ingress chose, or a drop when it is missing
 * (fail closed, never the app's own listener; a DNS client's retry then finds no proxy in
 * zt_egress and goes to its resolver).
 * Only a lookup matching a fresh entry exactly (both addresses and ports, and arriving on the
 * pod's interface) counts: the entry is consumed by it. Every other lookup passes untouched,
 * among them the socket lookups of zt_ingress and zt_egress, which run through this program
 * too.
 */
int zt_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    struct zt_flow key = {};
    if (ctx->family == 2 /* AF_INET */) {
        key.remote.a[2] = bpf_htonl(0xffff);
        key.remote.a[3] = ctx->remote_ip4;
        key.local.a[2] = bpf_htonl(0xffff);
        key.local.a[3] = ctx->local_ip4;
    } else if (ctx->family == 10 /* AF_INET6 */) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            key.remote.a[i] = ctx->remote_ip6[i];
            key.local.a[i] = ctx->local_ip6[i];
        }
    } else {
        return SK_PASS;
    }
    key.remote_port = bpf_ntohs(ctx->remote_port);
    key.local_port = ctx->local_port;
    struct zt_reuse_entry *found = zt_reuse.lookup(&key);
    if (!found || found->ifindex != ctx->ingress_ifindex)
        return SK_PASS;
    struct zt_reuse_entry entry = *found;
    zt_reuse.delete(&key);
    if (bpf_ktime_get_ns() - entry.at_ns > ZT_REUSE_TTL_NS)
        return SK_PASS;
    struct zt_pod_counters *cnt = zt_counters.lookup(&entry.pod_id);
    struct zt_listener_key lk = {.pod_id = entry.pod_id, .port = entry.port};
    if (entry.port == ZT_PORT_DNS)
        lk.family = ctx->family == 10 ? 6 : 4;
    struct bpf_sock *sk = (struct bpf_sock *)zt_listeners.lookup(&lk);
    long err = -1;
    if (sk) {
        err = bpf_sk_assign(ctx, sk, 0);
        bpf_sk_release(sk);
    }
    if (err) {
        if (cnt)
            zt_count(&cnt->drops);
        return SK_DROP;
    }
    if (cnt) {
        zt_count(&cnt->assigns);
        if (entry.port == ZT_PORT_INBOUND || entry.port == ZT_PORT_HBONE)
            zt_count(&cnt->inbound);
    }
    return SK_PASS;
}
