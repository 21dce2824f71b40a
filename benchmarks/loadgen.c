/*
 * loadgen: an epoll load client for the framework benchmarks (compiled by benchmarks/run.py with
 * `gcc -O2`). Written in C so that the client is never the bottleneck: it reports its own CPU time
 * (getrusage) next to the server's.
 *
 * Wire protocol: frames of a u32 big-endian payload length, then the payload. Every payload starts
 * with an 8-byte little-endian CLOCK_MONOTONIC nanosecond stamp:
 *   echo      we stamp each frame at send; the echoed copy gives the round-trip time. K frames are
 *             kept in flight per connection (every echo received sends one new frame).
 *   broadcast the server stamps each tick; latency = arrival - stamp (same host, same clock).
 *   idle      connections only; used to measure the server's memory per connection.
 *   fair      echo with two roles: the first --bystanders connections play ping-pong (1 frame in
 *             flight, --bystander-payload bytes); the others are flooders keeping --inflight frames
 *             of --payload bytes in flight and reading every reply. The bystanders' round trips get
 *             their own histogram (by_*), so a server that serves one flooder's backlog in one go
 *             shows up as the bystanders' tail latency. In each epoll batch the bystanders' events
 *             are handled first, so the client's own flooder work does not inflate their figures.
 *             With --inflight 0 the flooders have no window: each writes a 64 KiB block of frames
 *             whenever its socket is writable (and still reads every reply).
 *
 * Phases: connect (paced: at most --connect-batch connections between connect() and their first
 * echoed "handshake" frame, so the server's accept backlog never overflows even at 10,000
 * connections), then load for --warmup seconds, then the measured window of --duration seconds.
 * With --server-pid the client samples the server's utime+stime (/proc/PID/stat) and RSS exactly at
 * the window's edges, so CPU and frame counts cover the same interval.
 *
 * The handshake frame carries the stamp 0xFFFFFFFFFFFFFFFF, which no real clock reading reaches,
 * so it is told apart from broadcast frames. On exit every socket is closed with SO_LINGER 0 (RST):
 * no TIME_WAIT pile-up across the many runs of one benchmark.
 *
 * Output: one JSON object on stdout. Progress and errors go to stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MARKER UINT64_MAX
#define HANDSHAKE_PAYLOAD 16
#define STREAM_BLOCK 65536 /* bytes a streaming flooder writes per writable event */

enum mode { MODE_ECHO, MODE_BROADCAST, MODE_IDLE, MODE_FAIR };
enum cstate { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_READY, C_DEAD };
enum phase { P_CONNECT, P_WARMUP, P_MEASURE, P_DONE };

struct conn {
    int fd;
    int state;
    int attempts;
    uint32_t carry_len;        /* bytes of a partial frame kept from the last read */
    uint8_t *carry;
    uint8_t *out;              /* bytes the socket did not take yet */
    size_t out_len, out_cap;
    int want_out;
    int bystander;             /* fair mode: a ping-pong connection measured on its own */
    double retry_at;           /* for failed connects: when to try again */
};

static struct {
    const char *host;
    int port;
    int mode;
    int conns;
    int inflight;
    int payload;
    double warmup;
    double duration;
    int batch;
    double connect_timeout;
    int server_pid;
    uint32_t max_frame;
    int bystanders;
    int by_payload;
} opt = {"127.0.0.1", 0, MODE_ECHO, 100, 1, 64, 1.0, 3.0, 256, 180.0, 0, 1u << 20, 0, 64};

static struct conn *conns;
static int epfd;
static uint8_t *rbuf;
static size_t rbuf_cap;
static uint8_t *wbuf;
static size_t wbuf_cap;
static uint8_t *filler; /* one frame's payload bytes after the stamp */
static int phase = P_CONNECT;

static uint64_t frames_window, bytes_window, frames_total, handshakes;
static uint64_t by_frames_window; /* fair mode: the bystanders' share of frames_window */
static uint64_t errors, closed_by_peer, connect_retries;
static uint64_t by_closed, flood_closed; /* fair mode: closed by the server, per role */
static int established, outstanding, next_start, dead;

/* latency histogram: 0.1 us buckets below 10 ms, 10 us below 1 s, 1 ms up to 100 s */
#define H1 100000
#define H2 100000
#define H3 100000
struct hist {
    uint32_t b[H1 + H2 + H3 + 1];
    uint64_t n;
};
static struct hist lat_all, lat_by; /* every echoed frame; fair mode's bystanders only */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double now_s(void) { return (double)now_ns() / 1e9; }

static void hist_add(struct hist *h, uint64_t ns) {
    size_t i;
    if (ns < 10000000ull) i = ns / 100;
    else if (ns < 1000000000ull) i = H1 + (ns - 10000000ull) / 10000;
    else if (ns < 100000000000ull) i = H1 + H2 + (ns - 1000000000ull) / 1000000;
    else i = H1 + H2 + H3;
    h->b[i]++;
    h->n++;
}

static double hist_bucket_us(size_t i) {
    if (i < H1) return (double)i * 0.1;
    if (i < H1 + H2) return 10000.0 + (double)(i - H1) * 10.0;
    if (i < H1 + H2 + H3) return 1000000.0 + (double)(i - H1 - H2) * 1000.0;
    return 1e8;
}

static double hist_quantile_us(const struct hist *h, double q) {
    if (h->n == 0) return -1.0;
    uint64_t want = (uint64_t)(q * (double)(h->n - 1)) + 1, seen = 0;
    for (size_t i = 0; i < sizeof h->b / sizeof h->b[0]; i++) {
        seen += h->b[i];
        if (seen >= want) return hist_bucket_us(i);
    }
    return hist_bucket_us(H1 + H2 + H3);
}

static double hist_max_us(const struct hist *h) {
    for (size_t i = sizeof h->b / sizeof h->b[0]; i-- > 0;)
        if (h->b[i]) return hist_bucket_us(i);
    return -1.0;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- server process statistics ---- */

static int read_proc_cpu(double *user_s, double *sys_s) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces: fields restart after its ')' */
    if (!p) return -1;
    unsigned long long ut = 0, st = 0;
    /* after ')' : state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2) return -1;
    double tck = (double)sysconf(_SC_CLK_TCK);
    *user_s = (double)ut / tck;
    *sys_s = (double)st / tck;
    return 0;
}

static long read_proc_rss_kb(void) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- sockets ---- */

static void set_events(struct conn *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
    c->want_out = want_out;
}

static void kill_conn(struct conn *c, int by_peer) {
    if (c->state == C_DEAD) return;
    if (c->state == C_CONNECTING || c->state == C_HANDSHAKE) outstanding--;
    if (c->state == C_READY) established--;
    if (by_peer) closed_by_peer++;
    else errors++;
    if (by_peer && c->bystander) by_closed++;
    else if (by_peer) flood_closed++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = C_DEAD;
    dead++;
}

/* Write what we can; keep the rest and ask for EPOLLOUT. */
static void send_bytes(struct conn *c, const uint8_t *data, size_t len) {
    if (c->out_len == 0) {
        while (len > 0) {
            ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN) break;
                kill_conn(c, errno == ECONNRESET || errno == EPIPE);
                return;
            }
            data += n;
            len -= (size_t)n;
        }
        if (len == 0) return;
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len) cap *= 2;
        c->out = realloc(c->out, cap);
        if (!c->out) die("realloc");
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    if (!c->want_out) set_events(c, 1);
}

/* fair mode with --inflight 0: a flooder writes whenever its socket takes more (no window) */
static inline int streaming(const struct conn *c) {
    return opt.mode == MODE_FAIR && opt.inflight == 0 && !c->bystander && c->state == C_READY && phase != P_CONNECT;
}

static void flush_out(struct conn *c) {
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            kill_conn(c, errno == ECONNRESET || errno == EPIPE);
            return;
        }
        off += (size_t)n;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    if (c->out_len == 0 && !streaming(c)) set_events(c, 0);
}

static inline void put_u32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint8_t *ensure_wbuf(size_t len) {
    if (len > wbuf_cap) {
        wbuf_cap = len * 2;
        wbuf = realloc(wbuf, wbuf_cap);
        if (!wbuf) die("realloc");
    }
    return wbuf;
}

/* Send `count` frames of `payload` bytes stamped `stamp`, in one write. */
static void send_frames(struct conn *c, int count, uint64_t stamp, int payload) {
    size_t flen = 4 + (size_t)payload;
    uint8_t *p = ensure_wbuf(flen * (size_t)count);
    for (int i = 0; i < count; i++) {
        uint8_t *f = p + flen * (size_t)i;
        put_u32be(f, (uint32_t)payload);
        put_u64le(f + 4, stamp);
        memcpy(f + 12, filler, (size_t)payload - 8);
    }
    send_bytes(c, p, flen * (size_t)count);
}

static void start_connect(struct conn *c, const struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE) die("socket (raise the fd limit)");
        die("socket");
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->attempts++;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    c->want_out = 1;
    c->state = C_CONNECTING;
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        /* EAGAIN here means no free local port right now: retry later like a refused connect */
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        c->fd = -1;
        c->state = C_IDLE;
        c->retry_at = now_s() + 0.05;
        connect_retries++;
        return;
    }
}

static void on_connect_ready(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
        c->state = C_IDLE; /* still counted in `outstanding`: its retry keeps the slot */
        c->retry_at = now_s() + 0.05 * (c->attempts < 20 ? c->attempts : 20);
        connect_retries++;
        return;
    }
    c->state = C_HANDSHAKE;
    set_events(c, 0);
    send_frames(c, 1, MARKER, HANDSHAKE_PAYLOAD);
}

/* Parse the frames in `buf[0:len]`; returns bytes consumed, or -1 on a protocol error. */
static long on_bytes(struct conn *c, const uint8_t *buf, size_t len, uint64_t now) {
    size_t off = 0;
    int echoed = 0;
    while (len - off >= 4) {
        uint32_t n = ((uint32_t)buf[off] << 24) | ((uint32_t)buf[off + 1] << 16) | ((uint32_t)buf[off + 2] << 8) |
                     buf[off + 3];
        if (n > opt.max_frame || n < 8) return -1;
        if (len - off < 4 + (size_t)n) break;
        uint64_t stamp = get_u64le(buf + off + 4);
        off += 4 + n;
        frames_total++;
        if (stamp == MARKER) {
            if (c->state == C_HANDSHAKE) {
                c->state = C_READY;
                outstanding--;
                established++;
                handshakes++;
            }
            continue;
        }
        if (phase == P_MEASURE) {
            frames_window++;
            bytes_window += 4 + n;
            if (stamp <= now) hist_add(&lat_all, now - stamp);
            if (c->bystander) {
                by_frames_window++;
                if (stamp <= now) hist_add(&lat_by, now - stamp);
            }
        }
        if (opt.mode == MODE_ECHO || opt.mode == MODE_FAIR) echoed++;
    }
    if (echoed && phase != P_DONE && !streaming(c))
        send_frames(c, echoed, now, c->bystander ? opt.by_payload : opt.payload);
    return (long)off;
}

static void on_readable(struct conn *c) {
    for (;;) {
        size_t have = c->carry_len;
        if (have) memcpy(rbuf, c->carry, have);
        ssize_t n = recv(c->fd, rbuf + have, rbuf_cap - have, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            kill_conn(c, errno == ECONNRESET);
            return;
        }
        if (n == 0) {
            kill_conn(c, 1);
            return;
        }
        size_t total = have + (size_t)n;
        long used = on_bytes(c, rbuf, total, now_ns());
        if (used < 0) {
            fprintf(stderr, "loadgen: bad frame from server (length out of range)\n");
            kill_conn(c, 0);
            return;
        }
        if (c->state == C_DEAD) return;
        size_t rest = total - (size_t)used;
        if (rest) {
            if (!c->carry) {
                c->carry = malloc(4 + (size_t)opt.max_frame);
                if (!c->carry) die("malloc");
            }
            memcpy(c->carry, rbuf + used, rest);
        }
        c->carry_len = (uint32_t)rest;
        if ((size_t)n < rbuf_cap - have) return; /* short read: the socket is drained */
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host 127.0.0.1] [--mode echo|broadcast|idle|fair] [--conns N]\n"
            "               [--inflight K] [--payload BYTES] [--warmup S] [--duration S]\n"
            "               [--connect-batch N] [--connect-timeout S] [--server-pid PID]\n"
            "               [--bystanders B] [--bystander-payload BYTES]   (fair mode)\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", required_argument, 0, 'h'},          {"port", required_argument, 0, 'p'},
        {"mode", required_argument, 0, 'm'},          {"conns", required_argument, 0, 'c'},
        {"inflight", required_argument, 0, 'k'},      {"payload", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},        {"duration", required_argument, 0, 'd'},
        {"connect-batch", required_argument, 0, 'b'}, {"connect-timeout", required_argument, 0, 't'},
        {"server-pid", required_argument, 0, 'P'},    {"bystanders", required_argument, 0, 'B'},
        {"bystander-payload", required_argument, 0, 'y'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "echo")) opt.mode = MODE_ECHO;
            else if (!strcmp(optarg, "broadcast")) opt.mode = MODE_BROADCAST;
            else if (!strcmp(optarg, "idle")) opt.mode = MODE_IDLE;
            else if (!strcmp(optarg, "fair")) opt.mode = MODE_FAIR;
            else usage();
            break;
        case 'c': opt.conns = atoi(optarg); break;
        case 'k': opt.inflight = atoi(optarg); break;
        case 's': opt.payload = atoi(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'd': opt.duration = atof(optarg); break;
        case 'b': opt.batch = atoi(optarg); break;
        case 't': opt.connect_timeout = atof(optarg); break;
        case 'P': opt.server_pid = atoi(optarg); break;
        case 'B': opt.bystanders = atoi(optarg); break;
        case 'y': opt.by_payload = atoi(optarg); break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.conns <= 0 || opt.inflight < 0 || (opt.inflight == 0 && opt.mode != MODE_FAIR) ||
        opt.batch <= 0)
        usage();
    if (opt.payload < 8 || (uint32_t)opt.payload > opt.max_frame || opt.by_payload < 8 ||
        (uint32_t)opt.by_payload > opt.max_frame) {
        fprintf(stderr, "loadgen: --payload and --bystander-payload must be 8..%u bytes (they carry an 8-byte stamp)\n",
                opt.max_frame);
        return 2;
    }
    if (opt.mode != MODE_FAIR) opt.bystanders = 0;
    else if (opt.bystanders < 1 || opt.bystanders >= opt.conns) {
        fprintf(stderr, "loadgen: fair mode needs 1 <= --bystanders < --conns (the rest are flooders)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)opt.conns + 16) {
        fprintf(stderr, "loadgen: %d connections need more file descriptors than RLIMIT_NOFILE %llu\n", opt.conns,
                (unsigned long long)rl.rlim_cur);
        return 2;
    }

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address\n");
        return 2;
    }

    conns = calloc((size_t)opt.conns, sizeof *conns);
    rbuf_cap = 1u << 20;
    if ((size_t)opt.max_frame + 4 > rbuf_cap / 2) rbuf_cap = 2 * ((size_t)opt.max_frame + 4);
    rbuf = malloc(rbuf_cap);
    size_t filler_len = (size_t)(opt.payload > opt.by_payload ? opt.payload : opt.by_payload);
    filler = malloc(filler_len);
    if (!conns || !rbuf || !filler) die("malloc");
    memset(filler, 'x', filler_len);
    for (int i = 0; i < opt.conns; i++) {
        conns[i].fd = -1;
        conns[i].bystander = i < opt.bystanders;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");

    long rss_start = opt.server_pid ? read_proc_rss_kb() : -1, rss_connected = -1, rss_end = -1;
    double t_begin = now_s(), t_connected = 0, t_window = 0, t_end = 0;
    double srv_u0 = 0, srv_s0 = 0, srv_u1 = 0, srv_s1 = 0, cpu0 = 0, cpu1 = 0;
    int have_srv = 0;
    struct epoll_event evs[512];

    while (phase != P_DONE) {
        double t = now_s();
        if (phase == P_CONNECT) {
            /* start new connections and due retries while under the pacing limit */
            for (int i = 0; i < next_start; i++) {
                struct conn *c = &conns[i];
                if (c->state == C_IDLE && c->retry_at <= t) start_connect(c, &sa);
            }
            while (next_start < opt.conns && outstanding < opt.batch) {
                outstanding++;
                start_connect(&conns[next_start++], &sa);
            }
            if (established + dead == opt.conns) {
                t_connected = now_s();
                rss_connected = opt.server_pid ? read_proc_rss_kb() : -1;
                fprintf(stderr, "loadgen: %d connected in %.2fs (%llu retries)\n", established, t_connected - t_begin,
                        (unsigned long long)connect_retries);
                if (established == 0) break;
                phase = P_WARMUP;
                if (opt.mode == MODE_ECHO || opt.mode == MODE_FAIR) {
                    uint64_t now = now_ns();
                    for (int i = 0; i < opt.conns; i++)
                        if (conns[i].state == C_READY) {
                            if (conns[i].bystander) send_frames(&conns[i], 1, now, opt.by_payload);
                            else if (opt.inflight) send_frames(&conns[i], opt.inflight, now, opt.payload);
                            else set_events(&conns[i], 1); /* streaming: EPOLLOUT drives the writes */
                        }
                }
            } else if (t - t_begin > opt.connect_timeout) {
                fprintf(stderr, "loadgen: connect phase timed out: %d of %d connected\n", established, opt.conns);
                break;
            }
        } else if (phase == P_WARMUP && t >= t_connected + opt.warmup) {
            phase = P_MEASURE;
            t_window = now_s();
            cpu0 = self_cpu_s();
            if (opt.server_pid && read_proc_cpu(&srv_u0, &srv_s0) == 0) have_srv = 1;
        } else if (phase == P_MEASURE && t >= t_window + opt.duration) {
            t_end = now_s();
            cpu1 = self_cpu_s();
            if (have_srv && read_proc_cpu(&srv_u1, &srv_s1) != 0) have_srv = 0;
            rss_end = opt.server_pid ? read_proc_rss_kb() : -1;
            phase = P_DONE;
            break;
        }
        int timeout_ms = phase == P_CONNECT ? 5 : 10;
        int n = epoll_wait(epfd, evs, (int)(sizeof evs / sizeof evs[0]), timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        /* fair mode: two passes over the batch, bystanders first (see the header comment) */
        for (int k = 0; k < (opt.bystanders ? 2 * n : n); k++) {
            int i = k % n;
            struct conn *c = evs[i].data.ptr;
            if (opt.bystanders && c->bystander != (k < n)) continue;
            if (c->state == C_DEAD || c->fd < 0) continue;
            if (c->state == C_CONNECTING) {
                on_connect_ready(c);
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
            if (c->state == C_DEAD || !(evs[i].events & EPOLLOUT)) continue;
            if (c->out_len) flush_out(c);
            else if (streaming(c)) /* one block per event: every flooder gets its turn */
                send_frames(c, STREAM_BLOCK / (4 + opt.payload), now_ns(), opt.payload);
        }
    }

    double window = t_end > t_window ? t_end - t_window : 0.0;
    int ok = phase == P_DONE;
    static const char *mode_names[] = {"echo", "broadcast", "idle", "fair"};
    printf("{\"ok\": %s, \"mode\": \"%s\", \"conns\": %d, \"connected\": %d, \"inflight\": %d, \"payload\": %d,\n",
           ok ? "true" : "false", mode_names[opt.mode], opt.conns, established, opt.inflight, opt.payload);
    printf(" \"connect_s\": %.3f, \"connect_retries\": %llu, \"warmup_s\": %.3f, \"window_s\": %.6f,\n",
           t_connected > 0 ? t_connected - t_begin : -1.0, (unsigned long long)connect_retries, opt.warmup, window);
    printf(" \"frames\": %llu, \"frames_per_s\": %.1f, \"bytes_per_s\": %.1f,\n", (unsigned long long)frames_window,
           window > 0 ? (double)frames_window / window : 0.0, window > 0 ? (double)bytes_window / window : 0.0);
    printf(" \"lat_p50_us\": %.1f, \"lat_p90_us\": %.1f, \"lat_p99_us\": %.1f, \"lat_max_us\": %.1f,\n",
           hist_quantile_us(&lat_all, 0.50), hist_quantile_us(&lat_all, 0.90), hist_quantile_us(&lat_all, 0.99),
           hist_max_us(&lat_all));
    if (opt.mode == MODE_FAIR) {
        uint64_t flood = frames_window - by_frames_window;
        printf(" \"bystanders\": %d, \"bystander_payload\": %d, \"by_frames\": %llu, \"by_p50_us\": %.1f,"
               " \"by_p90_us\": %.1f, \"by_p99_us\": %.1f, \"by_max_us\": %.1f,\n",
               opt.bystanders, opt.by_payload, (unsigned long long)by_frames_window, hist_quantile_us(&lat_by, 0.50),
               hist_quantile_us(&lat_by, 0.90), hist_quantile_us(&lat_by, 0.99), hist_max_us(&lat_by));
        printf(" \"flood_frames\": %llu, \"flood_frames_per_s\": %.1f, \"by_closed\": %llu, \"flood_closed\": %llu,\n",
               (unsigned long long)flood, window > 0 ? (double)flood / window : 0.0, (unsigned long long)by_closed,
               (unsigned long long)flood_closed);
    }
    printf(" \"client_cpu_s\": %.4f, \"client_cpu_util\": %.4f,\n", cpu1 - cpu0,
           window > 0 ? (cpu1 - cpu0) / window : 0.0);
    if (have_srv) {
        double srv = (srv_u1 - srv_u0) + (srv_s1 - srv_s0);
        printf(" \"server_cpu_user_s\": %.4f, \"server_cpu_sys_s\": %.4f, \"server_cpu_s\": %.4f,"
               " \"server_cpu_util\": %.4f, \"server_us_per_frame\": %.4f,\n",
               srv_u1 - srv_u0, srv_s1 - srv_s0, srv, window > 0 ? srv / window : 0.0,
               frames_window ? srv * 1e6 / (double)frames_window : -1.0);
    }
    printf(" \"server_rss_kb_start\": %ld, \"server_rss_kb_connected\": %ld, \"server_rss_kb_end\": %ld,\n", rss_start,
           rss_connected, rss_end);
    printf(" \"errors\": %llu, \"closed_by_peer\": %llu}\n", (unsigned long long)errors,
           (unsigned long long)closed_by_peer);
    fflush(stdout);

    struct linger lg = {1, 0};
    for (int i = 0; i < opt.conns; i++)
        if (conns[i].fd >= 0) {
            setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(conns[i].fd);
        }
    return ok ? 0 : 1;
}
