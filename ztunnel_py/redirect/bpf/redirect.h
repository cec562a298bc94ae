/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared layout of the maps read by redirect.c and written by ztunnel_py/redirect/.
 *
 * zt_pods is keyed by pod IP (IPv4 as ::ffff:a.b.c.d), one entry per IP of each enrolled pod,
 * all carrying the same config. Pod IPs are unique on a node, while interface indexes repeat
 * across namespaces (every pod's eth0 may be ifindex 2) and bpf_get_netns_cookie() in tc only
 * knows the netns of skb->sk, which packets arriving from the wire do not have.
 * zt_counters is keyed by pod_id, the pod netns cookie chosen by the agent.
 * zt_listeners holds each pod's agent listeners by (pod_id, port); zt_reuse is the programs'
 * own (tc ingress writes it, the socket lookup program reads it), never touched by the agent.
 * Any change to these structs must bump LAYOUT_VERSION in ztunnel_py/redirect/loader.py (the
 * pin directory), so an agent never reopens pinned maps written with another layout; the
 * loader also refuses to start when ztunnel_py/redirect/maps.py disagrees with this file.
 */
#ifndef ZTUNNEL_PY_REDIRECT_H
#define ZTUNNEL_PY_REDIRECT_H

#define ZT_MAX_PODS 1024
#define ZT_MAX_ADDRS 4        /* pod IPs per family */
#define ZT_MAX_PORT_RANGES 16 /* excluded port ranges per direction */

/* The ports of the agent's listeners inside the pod netns (ZT_PORT_OUTBOUND, ZT_PORT_INBOUND,
 * ZT_PORT_HBONE) and the SO_MARK of the agent's sockets (ZT_AGENT_MARK) are defined once, in
 * ztunnel_py/model/ports.py; ztunnel_py/redirect/compile.py passes them as -D flags. */
#if !defined(ZT_PORT_OUTBOUND) || !defined(ZT_PORT_INBOUND) || !defined(ZT_PORT_HBONE) || \
    !defined(ZT_AGENT_MARK)
#error "compile with -DZT_PORT_OUTBOUND, -DZT_PORT_INBOUND, -DZT_PORT_HBONE and -DZT_AGENT_MARK"
/* zt_listeners key: one of the agent's listeners (ZT_PORT_*) in a pod's netns. */
struct zt_listener_key {
    __u64 pod_id;
    __u32 port;
    __u32 pad;
};

/* zt_reuse key: a connection as the kernel's listener lookup sees it (remote = the packet's
 * source). IPv4 addresses are stored IPv4-mapped, as in zt_addr; ports in host order. */
struct zt_flow {
    struct zt_addr remote;
    struct zt_addr local;
    __u16 remote_port;
    __u16 local_port;
    __u32 pad;
};

/* zt_reuse value: which listener takes the SYN, and when tc recorded it. */
struct zt_reuse_entry {
    __u64 pod_id;
    __u64 at_ns;
    __u32 port;
    __u32 ifindex;
};

#endif
/* The agent's mark is compared under this mask, as Istio does. */
#define ZT_AGENT_MARK_MASK 0xfff
/* Set on hairpinned packets; `ip rule fwmark 0x400/0xf00` routes them to the local table. */
#define ZT_ROUTE_MARK 0x400
#define ZT_ROUTE_MARK_MASK 0xf00

struct zt_port_range {
    __u16 lo; /* inclusive, host byte order */
    __u16 hi;
};

struct zt_ip6 {
    __be32 w[4];
};

struct zt_addr {
    __be32 a[4];
};

struct zt_pod_config {
    __u64 pod_id;
    __u32 n_ip4;
    __u32 n_ip6;
    __be32 ip4[ZT_MAX_ADDRS];
    struct zt_ip6 ip6[ZT_MAX_ADDRS];
    __be32 probe_ip4;         /* 0: no IPv4 probe exemption */
    struct zt_ip6 probe_ip6;  /* all zero: no IPv6 probe exemption */
    __u32 n_in_excluded;
    __u32 n_out_excluded;
    struct zt_port_range in_excluded[ZT_MAX_PORT_RANGES];
    struct zt_port_range out_excluded[ZT_MAX_PORT_RANGES];
    /* Agent bookkeeping, unused by the programs: the interface's accept_local sysctl before
     * enrollment (value + 1; 0 = unknown), restored at unenroll even by a restarted agent, and
     * the index of the interface the programs are attached to (for map dumps). */
    __u32 saved_accept_local;
    __u32 ifindex;
    __u32 pad;
};

struct zt_pod_counters {
    __u64 inbound;    /* packets to the pod assigned to the 15006/15008 listeners */
    __u64 outbound;   /* egress packets hairpinned to ingress (new flows, replies to the agent) */
    __u64 assigns;    /* successful bpf_sk_assign calls (inbound and outbound connections) */
    __u64 drops;      /* fail-closed drops: listener missing, assign failed, TCP unparseable */
    __u64 exempt;     /* packets left uncaptured by the probe exemption or an excluded port */
    __u64 spoofed;    /* packets from outside carrying a pod IP as source, dropped */
};

/* zt_listeners key: one of the agent's listeners (ZT_PORT_*) in a pod's netns. */
struct zt_listener_key {
    __u64 pod_id;
    __u32 port;
    __u32 pad;
};

/* zt_reuse key: a connection as the kernel's listener lookup sees it (remote = the packet's
 * source). IPv4 addresses are stored IPv4-mapped, as in zt_addr; ports in host order. */
struct zt_flow {
    struct zt_addr remote;
    struct zt_addr local;
    __u16 remote_port;
    __u16 local_port;
    __u32 pad;
};

/* zt_reuse value: which listener takes the SYN, and when tc recorded it. */
struct zt_reuse_entry {
    __u64 pod_id;
    __u64 at_ns;
    __u32 port;
    __u32 ifindex;
};

#endif
