/* pgpool.h - a pool of non-blocking libpq connections on the daemon's loop.
 *
 * min_size connections are kept open, more are opened on demand up to
 * max_size, and idle ones above min_size close after a minute. A query waits
 * in a FIFO for a free connection (that wait counts toward its job's
 * timeout). Named queries are prepared once per connection and reused.
 * What a job's statement may leave on the session (sql_session.h) is undone
 * or its connection closed before the next jobs' run there (see pgpool.c).
 * Cancelling a running query sends PQcancel from a pool thread (it blocks) and
 * keeps reading the connection until the server gives it back.
 *
 * Connections run in libpq's pipeline mode, each query with a sync of its own
 * (its own implicit transaction, so one query's error aborts no other).
 * postgres.pipeline (default 1) is how many queries one connection may have
 * in flight: above 1, a busy pool sends further queries down the least loaded
 * connection without waiting for the previous answer, trading head-of-line
 * blocking behind a slow query for far fewer round trips.
 */
#ifndef JOBD_PGPOOL_H
#define JOBD_PGPOOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "job.h"

struct daemon;
struct pgpool;

/* Rows and bytes one result may hold; more is too_large, and the query is
 * cancelled on the server rather than read to the end. Bytes are those of
 * the rows as JSON text: keys repeated in every row, quotes, escapes. */
#define SQL_MAX_ROWS 100000
#define SQL_MAX_BYTES (16 * 1024 * 1024)

struct sql_query {
    /* Set by the caller. */
    const char *name;           /* named query: prepared as "q_<name>"; NULL for raw SQL */
    const char *sql;
    int nparams;
    const char *const *params;  /* text values, NULL for SQL NULL */
    int64_t timeout_ms;         /* statement_timeout guard */
    unsigned session;           /* SQL_SESSION_*: what it may leave on its session */
    void (*done)(struct sql_query *q);  /* exactly once, on the loop */
    void *arg;
    const char *job_id;         /* names the job in log lines, finds its stand-in */

    /* Filled by the pool before done(). */
    json_t *rows;               /* array of objects; NULL on error */
    char command[64];           /* command tag, e.g. "SELECT 1" */
    long long row_count;
    struct job_error err;       /* err.code NULL on success */

    /* Private to the pool. */
    struct pg_conn *conn;
    struct sql_query *next;     /* in the wait queue, in conn's pipeline, or parked */
    bool parked;                /* waiting for what its last attempt left (stand-in) */
    unsigned char steps[11];    /* what was sent for it, in order (enum step) */
    int nsteps, step;           /* step: whose results are being read */
    bool row_mode;              /* single-row mode asked for the execute step */
    bool executed;              /* the execute step completed */
    bool left_state;            /* its session is not as before: close the connection */
    bool cancelled, too_large, requeued;
    bool unprepared;            /* a named query sent as an unnamed statement (query_answered()) */
    bool again;                 /* cancelled for a timeout, with a retry to come */
    uint64_t cancels_seen;      /* conn->cancels_delivered when it was sent */
    int64_t sent_us;            /* mono_us() when it was sent */
    int64_t expected_us;        /* its run time as estimated when it was sent */
    bool sent_behind;           /* sent while others ran on its connection */
    size_t bytes;               /* the rows so far as JSON text (SQL_MAX_BYTES) */
    size_t row_bytes;           /* a row's JSON text without its values */
    json_t *fields;             /* column names */
    Oid *types;
};

struct pgpool_counts {
    int open, busy, idle, connecting, waiting;
    int inflight;               /* queries sent and not yet answered */
    uint64_t queries, errors, reconnects;
    uint64_t probes;            /* queries sent behind others only to measure them there */
};

/* NULL when postgres.conninfo is empty (SQL is off). */
struct pgpool *pgpool_create(struct daemon *d);
void pgpool_free(struct pgpool *pool);

/* Queue Q; it is sent when the current loop pass ends, and done() follows
 * (never before this returns). */
void pgpool_submit(struct pgpool *pool, struct sql_query *q);
/* Stop Q: dropped from the queue, or cancelled on the server. done() follows,
 * at once for a query queued behind another on its connection (a stand-in
 * takes its place there). AGAIN: its job may be retried, so the stand-in
 * keeps what the statement does for the retry (see pgpool.c). */
void pgpool_cancel(struct pgpool *pool, struct sql_query *q, bool again);

void pgpool_counts(const struct pgpool *pool, struct pgpool_counts *out);

/* The run times the pool has measured, per query (NAME "" for raw SQL), in
 * microseconds, 0 for none yet: ALONE sent to an idle connection (round trip
 * included), BEHIND what it added to the wait of the queries behind it. */
typedef void pgpool_run_time_fn(void *arg, const char *name, int64_t alone_us,
                                int64_t behind_us);
void pgpool_each_run_time(const struct pgpool *pool, pgpool_run_time_fn *fn, void *arg);

#endif
