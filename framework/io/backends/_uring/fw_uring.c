/* The io_uring backend's C side: see fw_uring.h for what it offers and
   framework/io/backends/io_uring.py's docstring for the kernel facts that shaped it. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <liburing.h>

#include "fw_uring.h"

/* user_data layout: an operation's id (< 2^56) or a tagged internal request. */
#define FW_UD_TIMEOUT_TAG (1ULL << 62)   /* linked timeout of op (ud & ~tag) */
#define FW_UD_ACCEPT_TAG  (1ULL << 61)   /* multishot accept of one listener */
#define FW_UD_CANCEL      ((1ULL << 63) | 1ULL)
#define FW_UD_WAKE        ((1ULL << 63) | 2ULL)
/* A stream's request: tag | send bit | generation << 24 | slot. A stream id is gen << 24 | slot. */
#define FW_UD_STREAM_TAG  (1ULL << 60)
#define FW_UD_STREAM_SEND (1ULL << 59)
#define FW_SID_MASK       ((1ULL << 56) - 1)
#define FW_WATCH_OFF 0xFFFFFFFFu
#if defined(IORING_RECV_MULTISHOT)
#define FW_HAVE_RECV_MULTISHOT 1
#else
#define FW_HAVE_RECV_MULTISHOT 0
#endif
#define FW_BGID 1                        /* the one provided-buffer group (a buffer ring) */
/* Linux 6.12 uapi, newer than liburing 2.3's headers */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

#if defined(IORING_ACCEPT_MULTISHOT)
#define FW_HAVE_MULTISHOT_ACCEPT 1
#else
#define FW_HAVE_MULTISHOT_ACCEPT 0
#endif

struct fw_ring {
#include "fw_ring_public.h"
    uint64_t wake_buf;       /* target of the eventfd read that post() completes */
    struct __kernel_timespec *ts;  /* one per SQ slot: a link timeout's timespec lives until submit */
    struct io_uring_probe *probe;
    struct io_uring_buf_ring *br;  /* provided-buffer ring (NULL = none), shared with the kernel */
    unsigned br_entries;
    char *pbuf_base;               /* br_entries buffers of pbuf_size bytes, owned by Python */
    unsigned pbuf_size;
    uint32_t *pbuf_refs;           /* per buffer: 1 while the kernel may fill it + chunks lent out */
    uint32_t *pbuf_fill;           /* per buffer: bytes the kernel has filled (incremental mode) */
    struct fw_stream *streams;     /* stream table, indexed by slot */
    unsigned nstreams;
    int *free_slots;               /* stack of free slots */
    unsigned nfree;
    int *freed_later;              /* slots freed during this reap: reusable from the next one */
    unsigned nfreed_later;
    int *starved;                  /* streams whose receive ended on -ENOBUFS, armed again next reap */
    unsigned nstarved;
    uint16_t *lent;                /* ring buffers delivered in the last reap, recycled at the next */
    unsigned nlent;
    fw_sev *sev;                   /* stream events of the last reap (Python's array) */
    unsigned sev_cap;
    struct io_uring ring;
};

enum { FW_S_FREE = 0, FW_S_OPEN = 1, FW_S_CLOSED = 2 };

/* One connection's stream: a multishot receive kept armed, and an ordered send queue in C memory
   (Python's bytes are copied in, so nothing of Python has to stay pinned while the kernel sends). */
struct fw_stream {
    int fd;
    uint32_t gen;
    uint8_t state;
    uint8_t recv_armed;   /* the multishot receive is in the kernel */
    uint8_t send_busy;    /* a send SQE is in the kernel */
    uint8_t starved;      /* on the starved list */
    uint8_t recv_ended;   /* EOF or error: never armed again */
    uint8_t dead;         /* a send failed: later sends are refused */
    uint8_t rpaused;      /* reading paused: the receive is cancelled and not armed again */
    uint32_t watch;       /* DRAINED when unsent bytes <= watch; FW_WATCH_OFF: none wanted */
    char *sbuf;           /* the send in flight: sbuf[soff:slen] not yet confirmed */
    uint32_t soff, slen, scap;
    char *qbuf;           /* bytes queued behind it */
    uint32_t qlen, qcap;
};

fw_ring *fw_ring_new(unsigned entries, unsigned cq_entries, int *err)
{
    fw_ring *r = calloc(1, sizeof(*r));
    if (!r) { *err = -ENOMEM; return NULL; }
    struct io_uring_params p;
    /* COOP_TASKRUN: no IPI per completion; TASKRUN_FLAG makes a peek notice pending task work and
       enter the kernel for it (liburing's peek does), so polling with timeout 0 stays prompt. */
    unsigned try_flags[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, 0 };
    int ret = -EINVAL;
    for (int i = 0; i < 2; i++) {
        memset(&p, 0, sizeof(p));
        p.flags = try_flags[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
        ret = io_uring_queue_init_params(entries, &r->ring, &p);
        if (ret != -EINVAL) break;   /* an older kernel rejects the newer flags */
    }
    if (ret < 0) { free(r); *err = ret; return NULL; }
    r->sq_entries = r->ring.sq.ring_entries;
    r->cq_entries = r->ring.cq.ring_entries;
    r->features = p.features;
    r->ts = calloc(r->sq_entries, sizeof(*r->ts));
    if (!r->ts) { io_uring_queue_exit(&r->ring); free(r); *err = -ENOMEM; return NULL; }
    r->probe = io_uring_get_probe_ring(&r->ring);
    *err = 0;
    return r;
}

void fw_ring_free(fw_ring *r)
{
    if (!r) return;
    if (r->br) {
        io_uring_unregister_buf_ring(&r->ring, FW_BGID);
        munmap(r->br, r->br_entries * sizeof(struct io_uring_buf));
    }
    io_uring_queue_exit(&r->ring);
    if (r->probe) io_uring_free_probe(r->probe);
    for (unsigned i = 0; i < r->nstreams; i++) {
        free(r->streams[i].sbuf);
        free(r->streams[i].qbuf);
    }
    free(r->streams);
    free(r->free_slots);
    free(r->freed_later);
    free(r->starved);
    free(r->lent);
    free(r->pbuf_refs);
    free(r->pbuf_fill);
    free(r->ts);
    free(r);
}

/* Can this process create a ring at all (kernel, seccomp, io_uring_disabled)? 0 or -errno. */
int fw_probe(void)
{
    struct io_uring ring;
    int ret = io_uring_queue_init(2, &ring, 0);
    if (ret < 0) return ret;
    io_uring_queue_exit(&ring);
    return 0;
}

int fw_opcode_supported(fw_ring *r, int op)
{
    return r->probe ? io_uring_opcode_supported(r->probe, op) : 0;
}

int fw_register_files_sparse(fw_ring *r, unsigned nr)
{
    return io_uring_register_files_sparse(&r->ring, nr);
}

int fw_update_file(fw_ring *r, unsigned slot, int fd)
{
    int ret = io_uring_register_files_update(&r->ring, slot, &fd, 1);
    return ret == 1 ? 0 : (ret < 0 ? ret : -EIO);
}

int fw_register_buffers_sparse(fw_ring *r, unsigned nr)
{
    return io_uring_register_buffers_sparse(&r->ring, nr);
}

int fw_update_buffer(fw_ring *r, unsigned slot, void *base, size_t len)
{
    struct iovec iov = { base, len };
    __u64 tag = 0;
    int ret = io_uring_register_buffers_update_tag(&r->ring, slot, &iov, &tag, 1);
    return ret == 1 ? 0 : (ret < 0 ? ret : -EIO);
}

/* Register a buffer ring of `entries` (a power of two) buffers base + i * size, all handed to the
   kernel at once. The ring itself is page-aligned memory the kernel maps; 0 or -errno.

   Incremental mode (6.12+): the kernel fills a buffer piece by piece, one receive after another
   (CQE flag F_BUF_MORE while it keeps the buffer), so a few large buffers serve thousands of
   connections' small messages without running out. Each piece is a chunk lent to the caller; a
   buffer goes back to the ring when the kernel is done with it and every chunk was released.
   Without incremental mode each buffer is one chunk: the same accounting holds. */
int fw_pbuf_setup(fw_ring *r, unsigned entries, char *base, unsigned size, int incremental)
{
    size_t len = entries * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) return -errno;
    uint32_t *refs = calloc(entries, sizeof(uint32_t));
    uint32_t *fill = calloc(entries, sizeof(uint32_t));
    if (!refs || !fill) { free(refs); free(fill); munmap(mem, len); return -ENOMEM; }
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)(uintptr_t)mem;
    reg.ring_entries = entries;
    reg.bgid = FW_BGID;
    /* the u16 after bgid: `flags` in 6.12+ headers, `pad` in liburing 2.3's */
    uint16_t reg_flags = incremental ? IOU_PBUF_RING_INC : 0;
    memcpy((char *)&reg + offsetof(struct io_uring_buf_reg, bgid) + sizeof(reg.bgid), &reg_flags,
           sizeof(reg_flags));
    int ret = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (ret) { free(refs); free(fill); munmap(mem, len); return ret; }
    r->br = mem;
    r->br_entries = entries;
    r->pbuf_base = base;
    r->pbuf_size = size;
    r->pbuf_refs = refs;
    r->pbuf_fill = fill;
    r->pbuf_inc = incremental ? 1 : 0;
    io_uring_buf_ring_init(r->br);
    int mask = io_uring_buf_ring_mask(entries);
    for (unsigned i = 0; i < entries; i++) {
        io_uring_buf_ring_add(r->br, base + (size_t)i * size, size, (unsigned short)i, mask, (int)i);
        refs[i] = 1;
    }
    io_uring_buf_ring_advance(r->br, (int)entries);
    return 0;
}

/* A CQE with IORING_CQE_F_BUFFER: account its chunk (res > 0 bytes lent to the caller, who
   releases it with fw_pbuf_release) and return where its data starts in the buffer memory. */
static uint32_t fw_pbuf_take(fw_ring *r, uint32_t flags, int32_t res)
{
    unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
    uint32_t off = (uint32_t)((size_t)bid * r->pbuf_size + r->pbuf_fill[bid]);
    if (res > 0) {
        r->pbuf_refs[bid]++;
        r->pbuf_lent++;
        if (r->pbuf_inc) r->pbuf_fill[bid] += (uint32_t)res;
    }
    if (!(flags & IORING_CQE_F_BUF_MORE)) r->pbuf_refs[bid]--;   /* the kernel is done with it */
    if (!r->pbuf_refs[bid]) {
        r->pbuf_refs[bid] = 1;
        r->pbuf_fill[bid] = 0;
        io_uring_buf_ring_add(r->br, r->pbuf_base + (size_t)bid * r->pbuf_size, r->pbuf_size,
                              (unsigned short)bid, io_uring_buf_ring_mask(r->br_entries), 0);
        io_uring_buf_ring_advance(r->br, 1);
    }
    return off;
}

/* Release `n` chunks (their buffer ids); buffers nobody uses any more go back with one tail
   update. Python passes a list: cffi makes the array. */
void fw_pbuf_recycle_many(fw_ring *r, uint16_t *bids, unsigned n)
{
    int mask = io_uring_buf_ring_mask(r->br_entries);
    int added = 0;
    for (unsigned i = 0; i < n; i++) {
        unsigned bid = bids[i];
        r->pbuf_lent--;
        if (--r->pbuf_refs[bid]) continue;
        r->pbuf_refs[bid] = 1;
        r->pbuf_fill[bid] = 0;
        io_uring_buf_ring_add(r->br, r->pbuf_base + (size_t)bid * r->pbuf_size, r->pbuf_size,
                              (unsigned short)bid, mask, added++);
    }
    if (added) io_uring_buf_ring_advance(r->br, added);
}

void fw_pbuf_recycle(fw_ring *r, unsigned bid)
{
    uint16_t b = (uint16_t)bid;
    fw_pbuf_recycle_many(r, &b, 1);
}

/* An SQE with room for `need` (the op plus its linked timeout), or NULL: the caller flushes. */
static inline struct io_uring_sqe *fw_get(fw_ring *r, unsigned need)
{
    if (io_uring_sq_space_left(&r->ring) < need) { r->sq_full++; return NULL; }
    return io_uring_get_sqe(&r->ring);
}

static inline void fw_finish(fw_ring *r, struct io_uring_sqe *sqe, int fixed_file, uint64_t ud,
                             int64_t timeout_ns)
{
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, ud);
    r->inflight++;
    r->sqes++;
    if (timeout_ns < 0) return;
    sqe->flags |= IOSQE_IO_LINK;
    struct io_uring_sqe *t = io_uring_get_sqe(&r->ring);
    struct __kernel_timespec *ts = &r->ts[t - r->ring.sq.sqes];
    ts->tv_sec = timeout_ns / 1000000000LL;
    ts->tv_nsec = timeout_ns % 1000000000LL;
    io_uring_prep_link_timeout(t, ts, 0);
    io_uring_sqe_set_data64(t, ud | FW_UD_TIMEOUT_TAG);
    r->inflight++;
    r->sqes++;
}

#define FW_NEED(t) ((t) >= 0 ? 2u : 1u)

int fw_prep_send(fw_ring *r, int fd, int fixed_file, char *buf, size_t off, unsigned len,
                        uint64_t ud, int64_t timeout_ns)
{
    struct io_uring_sqe *sqe = fw_get(r, FW_NEED(timeout_ns));
    if (!sqe) return -EBUSY;
    /* MSG_WAITALL: on a stream socket the kernel (5.19+) retries a short send itself */
    io_uring_prep_send(sqe, fd, buf + off, len, MSG_NOSIGNAL | MSG_WAITALL);
    fw_finish(r, sqe, fixed_file, ud, timeout_ns);
    return 0;
}

/* A whole flush of sends (plain fds, no timeout) in one FFI call, instead of one per send. A full
   SQ is submitted here and preparing goes on. Returns how many were prepared: fewer than n only
   when the SQ cannot be submitted; the caller fails the rest. */
int fw_prep_send_batch(fw_ring *r, int *fds, char **bufs, unsigned *lens, uint64_t *uds,
                              unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = fw_get(r, 1);
        if (!sqe) {
            r->enters++;
            r->submits++;
            int rc = io_uring_submit(&r->ring);
            if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return (int)i;
            sqe = fw_get(r, 1);
            if (!sqe) return (int)i;
        }
        io_uring_prep_send(sqe, fds[i], bufs[i], lens[i], MSG_NOSIGNAL | MSG_WAITALL);
        fw_finish(r, sqe, 0, uds[i], -1);
    }
    return (int)n;
}

int fw_prep_recv(fw_ring *r, int fd, int fixed_file, char *buf, unsigned len,
                        uint64_t ud, int64_t timeout_ns)
{
    struct io_uring_sqe *sqe = fw_get(r, FW_NEED(timeout_ns));
    if (!sqe) return -EBUSY;
    io_uring_prep_recv(sqe, fd, buf, len, 0);
    fw_finish(r, sqe, fixed_file, ud, timeout_ns);
    return 0;
}

/* A recv whose buffer the kernel picks from the ring when data arrives (IOSQE_BUFFER_SELECT): a
   recv waiting for data holds none; the CQE flags carry IORING_CQE_F_BUFFER and the buffer id. */
int fw_prep_recv_select(fw_ring *r, int fd, int fixed_file, unsigned len, uint64_t ud,
                               int64_t timeout_ns)
{
    struct io_uring_sqe *sqe = fw_get(r, FW_NEED(timeout_ns));
    if (!sqe) return -EBUSY;
    io_uring_prep_recv(sqe, fd, NULL, len, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = FW_BGID;
    fw_finish(r, sqe, fixed_file, ud, timeout_ns);
    return 0;
}

/* `buf` is the registered buffer's base (one cffi handle per buffer, made at registration), so an
   operation on a slice of it needs no per-operation handle: the slice is `off`. */
static int fw_prep_rw_fixed(fw_ring *r, int write, int fd, int fixed_file, char *buf, size_t off,
                            unsigned len, int buf_index, uint64_t ud, int64_t timeout_ns)
{
    struct io_uring_sqe *sqe = fw_get(r, FW_NEED(timeout_ns));
    if (!sqe) return -EBUSY;
    if (write)
        io_uring_prep_write_fixed(sqe, fd, buf + off, len, 0, buf_index);
    else
        io_uring_prep_read_fixed(sqe, fd, buf + off, len, 0, buf_index);
    fw_finish(r, sqe, fixed_file, ud, timeout_ns);
    return 0;
}

int fw_prep_write_fixed(fw_ring *r, int fd, int fixed_file, char *buf, size_t off, unsigned len,
                               int buf_index, uint64_t ud, int64_t timeout_ns)
{
    return fw_prep_rw_fixed(r, 1, fd, fixed_file, buf, off, len, buf_index, ud, timeout_ns);
}

int fw_prep_read_fixed(fw_ring *r, int fd, int fixed_file, char *buf, size_t off, unsigned len,
                              int buf_index, uint64_t ud, int64_t timeout_ns)
{
    return fw_prep_rw_fixed(r, 0, fd, fixed_file, buf, off, len, buf_index, ud, timeout_ns);
}

int fw_prep_accept(fw_ring *r, int fd, int fixed_file, int multishot, uint64_t ud)
{
    struct io_uring_sqe *sqe = fw_get(r, 1);
    if (!sqe) return -EBUSY;
#if FW_HAVE_MULTISHOT_ACCEPT
    if (multishot)
        io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    else
#endif
        io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    fw_finish(r, sqe, fixed_file, ud, -1);
    return 0;
}

int fw_prep_connect(fw_ring *r, int fd, int fixed_file, char *addr, unsigned addrlen,
                           uint64_t ud, int64_t timeout_ns)
{
    struct io_uring_sqe *sqe = fw_get(r, FW_NEED(timeout_ns));
    if (!sqe) return -EBUSY;
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)addr, addrlen);
    fw_finish(r, sqe, fixed_file, ud, timeout_ns);
    return 0;
}

int fw_prep_cancel(fw_ring *r, uint64_t target_ud, int any)
{
    struct io_uring_sqe *sqe = fw_get(r, 1);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel64(sqe, any ? 0 : target_ud, any ? IORING_ASYNC_CANCEL_ANY : 0);
    fw_finish(r, sqe, 0, FW_UD_CANCEL, -1);
    return 0;
}

int fw_prep_wake_read(fw_ring *r, int efd)
{
    struct io_uring_sqe *sqe = fw_get(r, 1);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, efd, &r->wake_buf, sizeof(r->wake_buf), 0);
    fw_finish(r, sqe, 0, FW_UD_WAKE, -1);
    return 0;
}


/* ------------------------------------------------------------------ streams
   A stream keeps one multishot receive (IORING_RECV_MULTISHOT + buffer select) armed per socket:
   one SQE serves every arrival until EOF, an error or an empty buffer ring (-ENOBUFS ends it; the
   stream is armed again at the next reap). Sends are copied into a per-stream C buffer and issued
   one at a time in order; their CQEs are handled here (short sends resubmitted, the queue moved
   up), so Python sees no per-send completion at all, only errors and the DRAINED it asked for. */

int fw_streams_init(fw_ring *r, unsigned n, fw_sev *sev, unsigned sev_cap)
{
    r->streams = calloc(n, sizeof(*r->streams));
    r->free_slots = malloc(n * sizeof(int));
    r->freed_later = malloc(n * sizeof(int));
    r->starved = malloc(n * sizeof(int));
    r->lent = malloc(sev_cap * sizeof(uint16_t));
    if (!r->streams || !r->free_slots || !r->freed_later || !r->starved || !r->lent) return -ENOMEM;
    r->nstreams = n;
    for (unsigned i = 0; i < n; i++) {
        r->free_slots[i] = (int)(n - 1 - i);   /* slot 0 first */
        r->streams[i].gen = 1;                 /* a stream id is never 0 ("nothing opened") */
    }
    r->nfree = n;
    r->sev = sev;
    r->sev_cap = sev_cap;
    return 0;
}

static inline uint64_t fw_sid(fw_ring *r, struct fw_stream *s)
{
    return ((uint64_t)s->gen << 24) | (uint64_t)(s - r->streams);
}

/* The stream of `sid` while it is open (a stale id, from a closed stream, finds NULL). */
static inline struct fw_stream *fw_stream_of(fw_ring *r, uint64_t sid)
{
    uint32_t slot = (uint32_t)(sid & 0xFFFFFF);
    if (slot >= r->nstreams) return NULL;
    struct fw_stream *s = &r->streams[slot];
    if (s->state != FW_S_OPEN || s->gen != (uint32_t)(sid >> 24)) return NULL;
    return s;
}

/* An SQE for an internal request, submitting the queued ones first if the SQ is full. */
static struct io_uring_sqe *fw_get_or_submit(fw_ring *r)
{
    struct io_uring_sqe *sqe = fw_get(r, 1);
    if (sqe) return sqe;
    r->enters++;
    r->submits++;
    io_uring_submit(&r->ring);
    return fw_get(r, 1);
}

static int fw_stream_arm(fw_ring *r, struct fw_stream *s)
{
#if FW_HAVE_RECV_MULTISHOT
    struct io_uring_sqe *sqe = fw_get_or_submit(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = FW_BGID;
    fw_finish(r, sqe, 0, FW_UD_STREAM_TAG | fw_sid(r, s), -1);
    s->recv_armed = 1;
    return 0;
#else
    return -EOPNOTSUPP;
#endif
}

static int fw_stream_submit_send(fw_ring *r, struct fw_stream *s)
{
    struct io_uring_sqe *sqe = fw_get_or_submit(r);
    if (!sqe) return -EBUSY;
    /* MSG_WAITALL: the kernel (5.19+) finishes a short send itself; what still comes back short
       is resubmitted from the CQE handler. */
    io_uring_prep_send(sqe, s->fd, s->sbuf + s->soff, s->slen - s->soff, MSG_NOSIGNAL | MSG_WAITALL);
    fw_finish(r, sqe, 0, FW_UD_STREAM_TAG | FW_UD_STREAM_SEND | fw_sid(r, s), -1);
    s->send_busy = 1;
    return 0;
}

static int fw_reserve(char **buf, uint32_t *cap, size_t need)
{
    if (need > 0xFFFFFFF0u) return -EMSGSIZE;
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    if (c > 0xFFFFFFF0u) c = need;
    char *p = realloc(*buf, c);
    if (!p) return -ENOMEM;
    *buf = p;
    *cap = (uint32_t)c;
    return 0;
}

static void fw_stream_drop_buffers(struct fw_stream *s)
{
    free(s->sbuf);
    free(s->qbuf);
    s->sbuf = s->qbuf = NULL;
    s->soff = s->slen = s->scap = s->qlen = s->qcap = 0;
}

/* A closed stream whose requests are all back: its slot is reusable from the next reap on (an
   event of the old stream still in this reap's array must not reach a new occupant). */
static void fw_stream_maybe_free(fw_ring *r, struct fw_stream *s)
{
    if (s->state != FW_S_CLOSED || s->recv_armed || s->send_busy || s->starved) return;
    fw_stream_drop_buffers(s);
    s->state = FW_S_FREE;
    s->gen = s->gen == 0xFFFFFFFFu ? 1 : s->gen + 1;
    r->freed_later[r->nfreed_later++] = (int)(s - r->streams);
}

int64_t fw_stream_open(fw_ring *r, int fd)
{
    if (!r->nfree) return -ENOSPC;
    struct fw_stream *s = &r->streams[r->free_slots[--r->nfree]];
    uint32_t gen = s->gen;
    memset(s, 0, sizeof(*s));
    s->gen = gen;
    s->fd = fd;
    s->state = FW_S_OPEN;
    s->watch = FW_WATCH_OFF;
    int rc = fw_stream_arm(r, s);
    if (rc < 0) {
        s->state = FW_S_CLOSED;
        fw_stream_maybe_free(r, s);
        return rc;
    }
    r->streams_open++;
    return (int64_t)fw_sid(r, s);
}

static inline int64_t fw_unsent(struct fw_stream *s)
{
    return (int64_t)(s->slen - s->soff) + s->qlen;
}

/* Queue `len` bytes; returns the stream's unsent bytes (this call's included) or -errno. */
int64_t fw_stream_send(fw_ring *r, uint64_t sid, const char *data, size_t len)
{
    struct fw_stream *s = fw_stream_of(r, sid);
    if (!s) return -ENOTCONN;
    if (s->dead) return -EPIPE;
    if (!len) return fw_unsent(s);
    if (s->send_busy) {
        int rc = fw_reserve(&s->qbuf, &s->qcap, (size_t)s->qlen + len);
        if (rc) return rc;
        memcpy(s->qbuf + s->qlen, data, len);
        s->qlen += (uint32_t)len;
        return fw_unsent(s);
    }
    int rc = fw_reserve(&s->sbuf, &s->scap, len);
    if (rc) return rc;
    memcpy(s->sbuf, data, len);
    s->soff = 0;
    s->slen = (uint32_t)len;
    rc = fw_stream_submit_send(r, s);
    if (rc) return rc;
    return fw_unsent(s);
}

/* One `data` to `n` streams (a broadcast): the indices where it failed or whose unsent bytes now
   exceed `high` go to `flagged`; returns how many. */
unsigned fw_stream_send_many(fw_ring *r, uint64_t *sids, unsigned n, const char *data, size_t len,
                                    int64_t high, uint32_t *flagged)
{
    unsigned nf = 0;
    for (unsigned i = 0; i < n; i++) {
        int64_t unsent = fw_stream_send(r, sids[i], data, len);
        if (unsent < 0 || unsent > high) flagged[nf++] = i;
    }
    return nf;
}

int64_t fw_stream_queued(fw_ring *r, uint64_t sid)
{
    struct fw_stream *s = fw_stream_of(r, sid);
    if (!s) return -ENOTCONN;
    return s->dead ? -EPIPE : fw_unsent(s);
}

/* Ask for one DRAINED event when the unsent bytes fall to `low` or below. Returns 1 (and asks
   nothing) when they already are, 0 when the event will come, -ENOTCONN for a closed stream. */
int fw_stream_watch(fw_ring *r, uint64_t sid, uint32_t low)
{
    struct fw_stream *s = fw_stream_of(r, sid);
    if (!s) return -ENOTCONN;
    if (s->dead || fw_unsent(s) <= (int64_t)low) { s->watch = FW_WATCH_OFF; return 1; }
    s->watch = low;
    return 0;
}

/* Cancel what a closed stream still has in the kernel; -EBUSY when no SQE could be had. */
static int fw_stream_cancel(fw_ring *r, struct fw_stream *s)
{
    uint64_t ud = FW_UD_STREAM_TAG | fw_sid(r, s);
    if (s->recv_armed) {
        struct io_uring_sqe *sqe = fw_get_or_submit(r);
        if (!sqe) return -EBUSY;
        io_uring_prep_cancel64(sqe, ud, 0);
        fw_finish(r, sqe, 0, FW_UD_CANCEL, -1);
    }
    if (s->send_busy) {
        struct io_uring_sqe *sqe = fw_get_or_submit(r);
        if (!sqe) return -EBUSY;
        io_uring_prep_cancel64(sqe, ud | FW_UD_STREAM_SEND, 0);
        fw_finish(r, sqe, 0, FW_UD_CANCEL, -1);
    }
    return 0;
}

/* Stop the stream: its receive and a send in flight are cancelled, queued bytes dropped, and no
   event of it reaches Python again. The slot is freed when the kernel has returned both. */
int fw_stream_close(fw_ring *r, uint64_t sid)
{
    struct fw_stream *s = fw_stream_of(r, sid);
    if (!s) return -ENOTCONN;
    s->state = FW_S_CLOSED;
    r->streams_open--;
    free(s->qbuf);
    s->qbuf = NULL;
    s->qlen = s->qcap = 0;
    if (fw_stream_cancel(r, s) < 0 && !s->starved) {
        /* no SQE to be had: try again at the next reap (the requests hold the socket open) */
        s->starved = 1;
        r->starved[r->nstarved++] = (int)(s - r->streams);
    }
    fw_stream_maybe_free(r, s);
    return 0;
}

/* Flow control: stop receiving (the multishot receive is cancelled; chunks the kernel had
   already filled still arrive, then its -ECANCELED end is not an error). The peer's further
   bytes wait in the socket buffer, and TCP's window pushes back on the sender. */
static void fw_stream_fail(fw_ring *r, struct fw_stream *s, int32_t res);

int fw_stream_pause_reading(fw_ring *r, uint64_t sid)
{
    struct fw_stream *s = fw_stream_of(r, sid);
    if (!s) return -ENOTCONN;
    if (s->rpaused) return 0;
    s->rpaused = 1;
    r->stream_pauses++;
    if (s->recv_armed) {
        struct io_uring_sqe *sqe = fw_get_or_submit(r);
        if (!sqe) return -EBUSY;   /* still paused: the receive ends at its next re-arm */
        io_uring_prep_cancel64(sqe, FW_UD_STREAM_TAG | fw_sid(r, s), 0);
        fw_finish(r, sqe, 0, FW_UD_CANCEL, -1);
    }
    return 0;
}

/* Receive again: armed now, or (a cancel still in flight, or starved) from its end CQE or the
   next reap. */
int fw_stream_resume_reading(fw_ring *r, uint64_t sid)
{
    struct fw_stream *s = fw_stream_of(r, sid);
    if (!s) return -ENOTCONN;
    if (!s->rpaused) return 0;
    s->rpaused = 0;
    if (s->recv_armed || s->recv_ended || s->starved) return 0;
    r->stream_rearms++;
    int rc = fw_stream_arm(r, s);
    if (rc) { s->recv_ended = 1; fw_stream_fail(r, s, rc); }
    return 0;
}

unsigned fw_streams_close_all(fw_ring *r)
{
    unsigned n = 0;
    for (unsigned i = 0; i < r->nstreams; i++)
        if (r->streams[i].state == FW_S_OPEN && !fw_stream_close(r, fw_sid(r, &r->streams[i]))) n++;
    return n;
}

static inline void fw_emit(fw_ring *r, struct fw_stream *s, uint32_t kind, int32_t res, uint32_t off)
{
    fw_sev *e = &r->sev[r->nsev++];
    e->sid = fw_sid(r, s);
    e->res = res;
    e->off = off;
    e->kind = kind;
}

/* Receiving or sending failed: sends are refused from now on; one STREAM_ERROR per stream. */
static void fw_stream_fail(fw_ring *r, struct fw_stream *s, int32_t res)
{
    if (s->dead) return;
    s->dead = 1;
    s->qlen = 0;
    s->watch = FW_WATCH_OFF;
    fw_emit(r, s, FW_SEV_ERROR, res, 0);
}

static void fw_stream_send_cqe(fw_ring *r, struct fw_stream *s, int32_t res)
{
    s->send_busy = 0;
    if (s->state != FW_S_OPEN) { fw_stream_maybe_free(r, s); return; }
    if (res < 0) { fw_stream_fail(r, s, res); return; }
    s->soff += (uint32_t)res;
    if (s->soff < s->slen) {
        if (res == 0) { fw_stream_fail(r, s, -EPIPE); return; }
        r->stream_short_sends++;
        if (fw_stream_submit_send(r, s)) fw_stream_fail(r, s, -EBUSY);
        return;
    }
    if (s->qlen) {   /* the queue becomes the send in flight; the old buffer takes the queue's place */
        char *b = s->sbuf; uint32_t c = s->scap;
        s->sbuf = s->qbuf; s->scap = s->qcap; s->slen = s->qlen; s->soff = 0;
        s->qbuf = b; s->qcap = c; s->qlen = 0;
        if (fw_stream_submit_send(r, s)) { fw_stream_fail(r, s, -EBUSY); return; }
    } else {
        /* all sent: an idle connection keeps no send memory */
        fw_stream_drop_buffers(s);
    }
    if (s->watch != FW_WATCH_OFF && fw_unsent(s) <= (int64_t)s->watch) {
        s->watch = FW_WATCH_OFF;
        fw_emit(r, s, FW_SEV_DRAINED, 0, 0);
    }
}

static void fw_stream_recv_cqe(fw_ring *r, struct fw_stream *s, struct io_uring_cqe *c)
{
    int32_t res = c->res;
    int more = c->flags & IORING_CQE_F_MORE;
    if (!more) s->recv_armed = 0;
    if (c->flags & IORING_CQE_F_BUFFER) {
        uint32_t off = fw_pbuf_take(r, c->flags, res);
        if (res > 0 && s->state == FW_S_OPEN) {
            r->lent[r->nlent++] = (uint16_t)(c->flags >> IORING_CQE_BUFFER_SHIFT);
            fw_emit(r, s, FW_SEV_DATA, res, off);
        } else if (res > 0) {
            fw_pbuf_recycle(r, c->flags >> IORING_CQE_BUFFER_SHIFT);
        }
    }
    if (s->state != FW_S_OPEN) { fw_stream_maybe_free(r, s); return; }
    if (more) return;
    if (res == 0) {
        s->recv_ended = 1;
        fw_emit(r, s, FW_SEV_EOF, 0, 0);
    } else if (res == -ECANCELED && s->rpaused) {
        /* stopped by stream_pause_reading: resume arms it again */
    } else if (res == -ENOBUFS || res > 0 || res == -ECANCELED) {
        /* (-ECANCELED without rpaused: resumed while the pause's cancel was in flight) */
        /* out of ring buffers, or the kernel ended the multishot (e.g. a full CQ): arm again at
           the next reap, after this one's buffers went back */
        if (res == -ENOBUFS) r->stream_enobufs++;
        s->starved = 1;
        r->starved[r->nstarved++] = (int)(s - r->streams);
    } else {
        s->recv_ended = 1;
        fw_stream_fail(r, s, res);
    }
}

/* Start of a reap: the previous reap's data was consumed (Python's callbacks returned), so its
   ring buffers go back; starved receives are armed again; slots freed last time become free. */
static void fw_streams_turn(fw_ring *r)
{
    if (r->nlent) {
        fw_pbuf_recycle_many(r, r->lent, r->nlent);
        r->nlent = 0;
    }
    unsigned n = r->nstarved;
    r->nstarved = 0;
    for (unsigned i = 0; i < n; i++) {
        struct fw_stream *s = &r->streams[r->starved[i]];
        if (r->nsev >= r->sev_cap / 2) {   /* leave room for this reap's CQEs; the rest next time */
            r->starved[r->nstarved++] = r->starved[i];
            continue;
        }
        s->starved = 0;
        if (s->state != FW_S_OPEN) {
            /* closed while starved, or its cancel found no SQE: cancel (again), then free */
            if ((s->recv_armed || s->send_busy) && fw_stream_cancel(r, s) < 0) {
                s->starved = 1;
                r->starved[r->nstarved++] = r->starved[i];
                continue;
            }
            fw_stream_maybe_free(r, s);
            continue;
        }
        if (s->rpaused) continue;   /* paused while starved: resume arms it */
        r->stream_rearms++;
        if (fw_stream_arm(r, s)) { s->recv_ended = 1; fw_stream_fail(r, s, -EBUSY); }
    }
    while (r->nfreed_later) r->free_slots[r->nfree++] = r->freed_later[--r->nfreed_later];
}

int fw_submit(fw_ring *r)
{
    unsigned n = io_uring_sq_ready(&r->ring);
    if (!n) return 0;
    r->enters++;
    r->submits++;
    return io_uring_submit(&r->ring);
}

/* Reap up to `cap` CQEs into `out` and advance the CQ. Internal CQEs (linked timeouts, cancel
   requests) only update counters. peek_batch flushes the kernel's overflow list (NODROP). */
static int fw_reap_cqes(fw_ring *r, fw_cqe *out, unsigned cap)
{
    struct io_uring_cqe *cqes[64];
    unsigned n = 0;
    while (1) {
        unsigned want = cap - n;
        if (r->streams && r->sev_cap - r->nsev < want) want = r->sev_cap - r->nsev;
        if (want > 64) want = 64;
        if (!want) { r->more = io_uring_cq_ready(&r->ring) > 0; break; }
        unsigned got = io_uring_peek_batch_cqe(&r->ring, cqes, want);
        if (!got) break;
        for (unsigned i = 0; i < got; i++) {
            struct io_uring_cqe *c = cqes[i];
            uint64_t ud = c->user_data;
            r->cqe_reaped++;
            if (ud == LIBURING_UDATA_TIMEOUT) continue;   /* liburing's own wait timeout */
            if (!(c->flags & IORING_CQE_F_MORE)) r->inflight--;
            if (ud == FW_UD_CANCEL) continue;
            if ((ud & FW_UD_TIMEOUT_TAG) && !(ud >> 63)) {
                if (c->res == -ETIME) r->timeouts_fired++;
                continue;
            }
            if ((ud & FW_UD_STREAM_TAG) && !(ud >> 63)) {
                uint32_t slot = (uint32_t)(ud & 0xFFFFFF);
                struct fw_stream *s = slot < r->nstreams ? &r->streams[slot] : NULL;
                if (!s || s->state == FW_S_FREE || s->gen != (uint32_t)((ud & FW_SID_MASK) >> 24)) {
                    if (c->flags & IORING_CQE_F_BUFFER) {   /* nobody to deliver to: release */
                        fw_pbuf_take(r, c->flags, c->res);
                        if (c->res > 0) fw_pbuf_recycle(r, c->flags >> IORING_CQE_BUFFER_SHIFT);
                    }
                } else if (ud & FW_UD_STREAM_SEND) {
                    fw_stream_send_cqe(r, s, c->res);
                } else {
                    fw_stream_recv_cqe(r, s, c);
                }
                continue;
            }
            out[n].user_data = ud;
            out[n].res = c->res;
            out[n].flags = c->flags;
            out[n].off = (c->flags & IORING_CQE_F_BUFFER) ? fw_pbuf_take(r, c->flags, c->res) : 0;
            n++;
        }
        io_uring_cq_advance(&r->ring, got);
    }
    return (int)n;
}

/* The previous reap's events were handled: a new batch starts (stream bookkeeping first). */
static inline void fw_batch_start(fw_ring *r)
{
    r->nsev = 0;
    r->more = 0;
    if (r->streams) fw_streams_turn(r);
}

/* Reap the rest of a batch that filled an output array (its events were handled). */
int fw_reap(fw_ring *r, fw_cqe *out, unsigned cap)
{
    fw_batch_start(r);
    return fw_reap_cqes(r, out, cap);
}

/* One io_uring_enter: submit everything queued and, unless CQEs are already waiting or
   timeout_ms == 0, wait up to timeout_ms (-1 forever) for one; then reap. */
int fw_submit_wait_reap(fw_ring *r, int timeout_ms, fw_cqe *out, unsigned cap)
{
    int ret = 0;
    /* Before waiting: ring buffers lent last time go back and starved streams are armed again,
       so their receives are in this very submission (after the wait would stall them). */
    fw_batch_start(r);
    unsigned queued = io_uring_sq_ready(&r->ring);
    if (timeout_ms == 0 || io_uring_cq_ready(&r->ring)) {
        if (queued) {
            r->enters++;
            r->submits++;
            ret = io_uring_submit(&r->ring);
        }
    } else {
        struct io_uring_cqe *cqe = NULL;
        r->enters++;
        if (queued) r->submits++;
        if (timeout_ms < 0) {
            ret = io_uring_submit_and_wait(&r->ring, 1);
        } else {
            struct __kernel_timespec ts;
            ts.tv_sec = timeout_ms / 1000;
            ts.tv_nsec = (long long)(timeout_ms % 1000) * 1000000LL;
            ret = io_uring_submit_and_wait_timeout(&r->ring, &cqe, 1, &ts, NULL);
        }
    }
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
        return ret;
    return fw_reap_cqes(r, out, cap);
}
