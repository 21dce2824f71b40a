/* The C side of the io_uring backend (framework/io/backends/io_uring.py): the API Python calls
   through cffi. fw_uring.c implements it over liburing 2.3 (Debian 12); _uring_build.py compiles
   both into framework.io.backends._uring.

   Python crosses the FFI boundary once per operation (prepare one SQE, with its linked timeout)
   and once per batch of completions (reap up to N CQEs into a preallocated array and advance the
   CQ), never once per field. */
#ifndef FW_URING_H
#define FW_URING_H

#include <stddef.h>
#include <stdint.h>

/* cffi-begin: everything up to cffi-end is also read as the cdef (plain declarations only) */
/* `off`: for a CQE that delivered ring-buffer data, where it starts in the buffer memory. */
typedef struct { uint64_t user_data; int32_t res; uint32_t flags; uint32_t off; uint32_t pad; } fw_cqe;
/* A stream event for Python: DATA (res bytes at offset `off` of the provided-buffer memory),
   EOF, ERROR (res = -errno) or DRAINED, for stream `sid`. */
typedef struct { uint64_t sid; int32_t res; uint32_t off; uint32_t kind; uint32_t pad; } fw_sev;

/* Opaque to Python but for the public fields of fw_ring_public.h. */
typedef struct fw_ring fw_ring;

/* Stream event kinds (fw_sev.kind); io_uring.py checks them against provider.STREAM_* at import. */
#define FW_SEV_DATA 0
#define FW_SEV_EOF 1
#define FW_SEV_ERROR 2
#define FW_SEV_DRAINED 3

fw_ring *fw_ring_new(unsigned entries, unsigned cq_entries, int *err);
void fw_ring_free(fw_ring *r);
int fw_probe(void);
int fw_opcode_supported(fw_ring *r, int op);

int fw_register_files_sparse(fw_ring *r, unsigned nr);
int fw_update_file(fw_ring *r, unsigned slot, int fd);
int fw_register_buffers_sparse(fw_ring *r, unsigned nr);
int fw_update_buffer(fw_ring *r, unsigned slot, void *base, size_t len);
int fw_pbuf_setup(fw_ring *r, unsigned entries, char *base, unsigned size, int incremental);
void fw_pbuf_recycle(fw_ring *r, unsigned bid);
void fw_pbuf_recycle_many(fw_ring *r, uint16_t *bids, unsigned n);
int fw_prep_recv_select(fw_ring *r, int fd, int fixed_file, unsigned len, uint64_t ud, int64_t timeout_ns);

int fw_prep_send(fw_ring *r, int fd, int fixed_file, char *buf, size_t off, unsigned len,
                 uint64_t ud, int64_t timeout_ns);
int fw_prep_send_batch(fw_ring *r, int *fds, char **bufs, unsigned *lens, uint64_t *uds, unsigned n);
int fw_prep_recv(fw_ring *r, int fd, int fixed_file, char *buf, unsigned len,
                 uint64_t ud, int64_t timeout_ns);
int fw_prep_write_fixed(fw_ring *r, int fd, int fixed_file, char *buf, size_t off, unsigned len,
                        int buf_index, uint64_t ud, int64_t timeout_ns);
int fw_prep_read_fixed(fw_ring *r, int fd, int fixed_file, char *buf, size_t off, unsigned len,
                       int buf_index, uint64_t ud, int64_t timeout_ns);
int fw_prep_accept(fw_ring *r, int fd, int fixed_file, int multishot, uint64_t ud);
int fw_prep_connect(fw_ring *r, int fd, int fixed_file, char *addr, unsigned addrlen,
                    uint64_t ud, int64_t timeout_ns);
int fw_prep_cancel(fw_ring *r, uint64_t target_ud, int any);
int fw_prep_wake_read(fw_ring *r, int efd);

int fw_streams_init(fw_ring *r, unsigned n, fw_sev *sev, unsigned sev_cap);
int64_t fw_stream_open(fw_ring *r, int fd);
int64_t fw_stream_send(fw_ring *r, uint64_t sid, const char *data, size_t len);
int64_t fw_stream_queued(fw_ring *r, uint64_t sid);
unsigned fw_stream_send_many(fw_ring *r, uint64_t *sids, unsigned n, const char *data, size_t len,
                             int64_t high, uint32_t *flagged);
int fw_stream_watch(fw_ring *r, uint64_t sid, uint32_t low);
int fw_stream_close(fw_ring *r, uint64_t sid);
int fw_stream_pause_reading(fw_ring *r, uint64_t sid);
int fw_stream_resume_reading(fw_ring *r, uint64_t sid);
unsigned fw_streams_close_all(fw_ring *r);

int fw_submit(fw_ring *r);
int fw_submit_wait_reap(fw_ring *r, int timeout_ms, fw_cqe *out, unsigned cap);
int fw_reap(fw_ring *r, fw_cqe *out, unsigned cap);
/* cffi-end */

#endif
