/* The fields of fw_ring that Python reads (statistics and the reap's results). A fragment:
   included inside `struct fw_ring` by fw_uring.c, and into the cdef by _uring_build.py, so the
   two can never disagree on the layout of this part. */
    unsigned sq_entries;
    unsigned cq_entries;
    unsigned features;
    int64_t inflight;        /* requests whose final CQE has not been reaped (ops, timeouts, cancels) */
    uint64_t submits;
    uint64_t enters;
    uint64_t sq_full;
    uint64_t cqe_reaped;
    uint64_t sqes;
    uint64_t timeouts_fired;
    unsigned nsev;           /* stream events in `sev` after the last fw_reap */
    unsigned more;           /* the last fw_reap stopped because an output array was full */
    unsigned streams_open;
    uint64_t stream_rearms;  /* multishot receives armed again (ENOBUFS, kernel-ended) */
    uint64_t stream_enobufs;
    uint64_t stream_short_sends;
    uint64_t stream_pauses;  /* receives stopped by stream_pause_reading (flow control) */
    unsigned pbuf_inc;       /* the buffer ring is consumed incrementally (IOU_PBUF_RING_INC) */
    unsigned pbuf_lent;      /* chunks of ring buffers delivered and not yet released */
