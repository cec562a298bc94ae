/*
 * ztunnel-py-cni: the CNI plugin binary a node's container runtime executes.
 *
 * The node has no Python environment of ours, so this small static program only forwards: it
 * hands the request (the CNI_* environment, the network configuration on stdin and, for ADD and
 * CHECK, an open descriptor of the pod's network namespace) to the ztunnel-py CNI node pod over
 * a Unix socket, and prints what the pod answers (the plugin itself, `ztunnel-py cni`, runs
 * there). This is istio-cni's split: a host binary that forwards, a node agent that decides.
 * Passing the namespace as a descriptor means the pod needs neither the host's /var/run/netns
 * nor its pid namespace to reach it.
 *
 * Wire format (all integers are 32-bit big-endian):
 *   request:  "ZPC1", count N, N x (length, "KEY=VALUE"), (length, stdin bytes);
 *             the namespace descriptor rides on the first byte as SCM_RIGHTS
 *   response: exit status, (length, stdout bytes), (length, stderr bytes)
 *
 * When the node pod does not answer (it is restarting, or it was never installed right), the
 * shim decides alone, on the side of never starting a pod outside the mesh:
 *   VERSION  our versions;
 *   DEL      success, with a warning (a pod being deleted must not wait for the mesh);
 *   ADD      prevResult passed through for pods of the configuration's "excludeNamespaces"
 *            (and invocations that name no Kubernetes pod), else error 11 "try again later",
 *            so the runtime retries the pod;
 *   CHECK    success for those same pods, else error 11;
 *   STATUS   error 50 (not available); GC success.
 *
 * The only JSON read here is three top-level keys of the configuration: "cniNodeSocket",
 * "cniVersion", "excludeNamespaces" (strings without escapes), and the span of "prevResult".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/ztunnel-py/cni/plugin.sock"
#define MAGIC "ZPC1"
#define MAX_STDIN (4u << 20)
#define MAX_OUTPUT (4u << 20)
#define IO_TIMEOUT_SECONDS 60
#define SUPPORTED "[\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"

extern char **environ;

struct span {
    const char *p;
    size_t n;
};

/* ---- the configuration: a few top-level keys of a JSON object ---------------------------- */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at the opening quote; returns just past the closing quote, or NULL. */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/* p at the first byte of a value; returns just past it, or NULL for malformed input. */
static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = skip_string(p, end);
                if (p == NULL) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
           *p != '\n' && *p != '\r')
        p++;
    return p;
}

/* The value of top-level key `key` in the JSON object `doc`; 0 if absent or malformed. */
static int find_key(struct span doc, const char *key, struct span *value) {
    const char *end = doc.p + doc.n;
    const char *p = skip_ws(doc.p, end);
    size_t keylen = strlen(key);
    if (p >= end || *p != '{') return 0;
    p = skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *kstart = p + 1;
        const char *kend = skip_string(p, end);
        if (kend == NULL) return 0;
        p = skip_ws(kend, end);
        if (p >= end || *p != ':') return 0;
        p = skip_ws(p + 1, end);
        const char *vend = skip_value(p, end);
        if (vend == NULL) return 0;
        if ((size_t)(kend - 1 - kstart) == keylen && memcmp(kstart, key, keylen) == 0) {
            value->p = p;
            value->n = (size_t)(vend - p);
            return 1;
        }
        p = skip_ws(vend, end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    return 0;
}

/* A string value without escapes, copied into `out` (NUL-terminated); 0 otherwise. */
static int plain_string(struct span value, char *out, size_t size) {
    if (value.n < 2 || value.p[0] != '"' || value.p[value.n - 1] != '"') return 0;
    size_t n = value.n - 2;
    if (n == 0 || n >= size || memchr(value.p + 1, '\\', n) != NULL) return 0;
    memcpy(out, value.p + 1, n);
    out[n] = '\0';
    return 1;
}

/* Whether the JSON array `list` holds the string `want`. */
static int list_has(struct span list, const char *want) {
    const char *end = list.p + list.n;
    const char *p = list.p;
    size_t n = strlen(want);
    if (list.n < 2 || *p != '[') return 0;
    for (p++; p < end;) {
        p = skip_ws(p, end);
        if (p < end && *p == '"') {
            const char *close = skip_string(p, end);
            if (close == NULL) return 0;
            if ((size_t)(close - p - 2) == n && memcmp(p + 1, want, n) == 0) return 1;
            p = close;
        } else {
            p++;
        }
    }
    return 0;
}

/* ---- answering without the node pod -------------------------------------------------------- */

static char cni_version[32] = "1.0.0";

static int version_known(const char *v) {
    static const char *known[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(v, known[i]) == 0) return 1;
    return 0;
}

/* Writes a JSON string literal of `s` (escaping what JSON requires). */
static void put_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c < 0x20) {
            printf("\\u%04x", c);
        } else {
            putchar(c);
        }
    }
    putchar('"');
}

static int cni_error(int code, const char *msg, const char *details) {
    printf("{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": ", cni_version, code);
    put_json_string(msg);
    if (details != NULL && *details) {
        printf(", \"details\": ");
        put_json_string(details);
    }
    printf("}\n");
    return 1;
}

/* The K8S_POD_NAMESPACE of CNI_ARGS into `out`; 0 if it names none. */
static int pod_namespace(char *out, size_t size) {
    const char *args = getenv("CNI_ARGS");
    if (args == NULL) return 0;
    for (const char *p = args; *p;) {
        const char *semi = strchr(p, ';');
        size_t len = semi ? (size_t)(semi - p) : strlen(p);
        static const char prefix[] = "K8S_POD_NAMESPACE=";
        size_t plen = sizeof prefix - 1;
        if (len > plen && len - plen < size && memcmp(p, prefix, plen) == 0) {
            memcpy(out, p + plen, len - plen);
            out[len - plen] = '\0';
            return 1;
        }
        p += len + (semi ? 1 : 0);
    }
    return 0;
}

static int alone(const char *command, struct span config, const char *socket_path,
                 const char *why) {
    char details[512];
    snprintf(details, sizeof details,
             "%s: %s; is the ztunnel-py CNI node pod running on this node?", socket_path, why);
    if (strcmp(command, "VERSION") == 0) {
        printf("{\"cniVersion\": \"%s\", \"supportedVersions\": " SUPPORTED "}\n",
               version_known(cni_version) ? cni_version : "1.1.0");
        return 0;
    }
    if (strcmp(command, "DEL") == 0 || strcmp(command, "GC") == 0) {
        fprintf(stderr, "ztunnel-py-cni: %s: node pod not reachable (%s); nothing to undo here\n",
                command, details);
        return 0;
    }
    if (strcmp(command, "STATUS") == 0)
        return cni_error(50, "the ztunnel-py CNI node pod is not reachable", details);
    if (strcmp(command, "ADD") == 0 || strcmp(command, "CHECK") == 0) {
        char ns[256];
        struct span excluded = {0}, prev = {0};
        int known_pod = pod_namespace(ns, sizeof ns);
        int skip = !known_pod ||
                   (find_key(config, "excludeNamespaces", &excluded) && list_has(excluded, ns));
        if (skip) {
            if (strcmp(command, "ADD") != 0) return 0;
            if (!find_key(config, "prevResult", &prev) || prev.n == 0 || prev.p[0] != '{')
                return cni_error(7, "ADD without prevResult",
                                 "ztunnel-py-cni is a chained plugin: list it after the primary "
                                 "plugin in the network configuration list");
            fwrite(prev.p, 1, prev.n, stdout);
            putchar('\n');
            return 0;
        }
        return cni_error(11, "the ztunnel-py CNI node pod is not reachable", details);
    }
    return cni_error(4, "unknown CNI_COMMAND", command);
}

/* ---- talking to the node pod --------------------------------------------------------------- */

struct buffer {
    char *p;
    size_t n, cap;
};

static int append(struct buffer *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    return 0;
}

static int append_u32(struct buffer *b, uint32_t v) {
    unsigned char bytes[4] = {v >> 24, v >> 16, v >> 8, v};
    return append(b, bytes, 4);
}

static int append_field(struct buffer *b, const void *data, size_t n) {
    return append_u32(b, (uint32_t)n) || append(b, data, n);
}

static int read_all(int fd, void *data, size_t n) {
    char *p = data;
    while (n > 0) {
        ssize_t got = read(fd, p, n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

static int read_u32(int fd, uint32_t *v) {
    unsigned char b[4];
    if (read_all(fd, b, 4) != 0) return -1;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 0;
}

/* Reads one (length, bytes) field and copies it to `out`; -1 on a short or oversized field. */
static int relay_field(int fd, FILE *out) {
    uint32_t n;
    if (read_u32(fd, &n) != 0 || n > MAX_OUTPUT) return -1;
    char *data = malloc(n ? n : 1);
    if (data == NULL || read_all(fd, data, n) != 0) {
        free(data);
        return -1;
    }
    fwrite(data, 1, n, out);
    free(data);
    return 0;
}

static int send_request(int sock, const struct buffer *req, int netns_fd) {
    size_t off = 0;
    while (off < req->n) {
        struct iovec iov = {.iov_base = req->p + off, .iov_len = req->n - off};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        char control[CMSG_SPACE(sizeof(int))];
        if (off == 0 && netns_fd >= 0) {
            memset(control, 0, sizeof control);
            msg.msg_control = control;
            msg.msg_controllen = sizeof control;
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &netns_fd, sizeof(int));
        }
        ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        if (sent <= 0) return -1;
        off += (size_t)sent;
    }
    return 0;
}

int main(void) {
    struct buffer in = {0};
    char chunk[65536];
    for (;;) {
        ssize_t got = read(STDIN_FILENO, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        if (in.n + (size_t)got > MAX_STDIN + 1 || append(&in, chunk, (size_t)got) != 0) break;
    }
    struct span config = {in.p ? in.p : "", in.n};
    struct span value;
    if (find_key(config, "cniVersion", &value)) {
        char v[sizeof cni_version];
        if (plain_string(value, v, sizeof v) && version_known(v)) strcpy(cni_version, v);
    }
    const char *command = getenv("CNI_COMMAND");
    if (command == NULL || *command == '\0')
        return cni_error(4, "CNI_COMMAND is not set",
                         "ztunnel-py-cni is a CNI plugin: the container runtime runs it");
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
    if (find_key(config, "cniNodeSocket", &value) &&
        !plain_string(value, socket_path, sizeof socket_path))
        return cni_error(7, "network configuration: 'cniNodeSocket' must be a socket path", NULL);

    int netns_fd = -1;
    const char *netns = getenv("CNI_NETNS");
    if (netns != NULL && *netns && (strcmp(command, "ADD") == 0 || strcmp(command, "CHECK") == 0))
        netns_fd = open(netns, O_RDONLY | O_CLOEXEC);

    struct buffer req = {0};
    size_t count = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "CNI_", 4) == 0) count++;
    int bad = append(&req, MAGIC, 4) || append_u32(&req, (uint32_t)count);
    for (char **e = environ; *e && !bad; e++)
        if (strncmp(*e, "CNI_", 4) == 0) bad = append_field(&req, *e, strlen(*e));
    bad = bad || append_field(&req, in.p ? in.p : "", in.n);
    if (bad) return cni_error(199, "out of memory", NULL);

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strcpy(addr.sun_path, socket_path);
    struct timeval timeout = {.tv_sec = IO_TIMEOUT_SECONDS};
    if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0 ||
        connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0)
        return alone(command, config, socket_path, strerror(errno));
    if (send_request(sock, &req, netns_fd) != 0)
        return alone(command, config, socket_path, strerror(errno));
    if (netns_fd >= 0) close(netns_fd);
    shutdown(sock, SHUT_WR);

    uint32_t status;
    if (read_u32(sock, &status) != 0)
        return alone(command, config, socket_path, "the node pod closed the connection");
    if (relay_field(sock, stdout) != 0 || relay_field(sock, stderr) != 0) {
        fflush(stdout);
        fprintf(stderr, "ztunnel-py-cni: the node pod's answer was cut short\n");
        return status ? (int)status : 1;
    }
    return (int)status;
}
