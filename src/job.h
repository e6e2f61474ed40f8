/* job.h - one job, from intake to its stored result.
 *
 * Ownership: the runner owns every struct job (runner.c creates and frees
 * them). An executor keeps its own state in job->exec_state and frees it in
 * its free() hook, called once from job_free().
 */
#ifndef JOBD_JOB_H
#define JOBD_JOB_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "list.h"
#include "threadpool.h"

struct daemon;
struct executor;
struct event;

/* Final statuses of PROTOCOL §4. */
enum job_status {
    JOB_SUCCEEDED = 0,
    JOB_FAILED,
    JOB_TIMED_OUT,
    JOB_CANCELLED,
    JOB_REJECTED,
};

/* Error codes of PROTOCOL §4. */
#define ERR_INVALID_JOB "invalid_job"
#define ERR_UNKNOWN_TYPE "unknown_type"
#define ERR_TIMEOUT "timeout"
#define ERR_CANCELLED "cancelled"
#define ERR_HTTP_STATUS "http_status"
#define ERR_HTTP_ERROR "http_error"
#define ERR_SQL_ERROR "sql_error"
#define ERR_IO_ERROR "io_error"
#define ERR_FORBIDDEN "forbidden"
#define ERR_TOO_LARGE "too_large"
#define ERR_UNAVAILABLE "unavailable"
#define ERR_SHUTDOWN "shutdown"
#define ERR_INTERNAL "internal"

struct job_error {
    const char *code;           /* one of ERR_*, NULL when there is none */
    char message[512];
    int http_status;            /* http_status: the status; 0 otherwise */
    char sqlstate[6];           /* the server's SQLSTATE (sql_error, and invalid_job for
                                 * params the server refused); "" otherwise */
    int64_t retry_after_ms;     /* a server's Retry-After, 0 when none */
};

/* Where a job came from, and so where it goes back to on shutdown or retry. */
enum job_source { SOURCE_PUBSUB, SOURCE_STREAM, SOURCE_CHILD };

enum job_state {
    JOB_NEW = 0,        /* parsed, not started */
    JOB_QUEUED,         /* taken beyond limits.max_inflight, or a group child beyond
                         * limits.max_group_children: waits unstarted for a slot */
    JOB_WAITING_RETRY,  /* a group child between attempts (on a timer, holding no slot) */
    JOB_RUNNING,        /* an executor has it */
    JOB_STOPPING,       /* cancel asked of the executor, waiting for it to finish */
    JOB_STORING,        /* outcome decided, being written to Redis */
};

/* Why the runner stopped an attempt (overrides what the executor reports). */
enum stop_reason { STOP_NONE = 0, STOP_TIMEOUT, STOP_CANCEL, STOP_SHUTDOWN, STOP_PARENT };

struct job {
    char id[129];
    const struct executor *exec;
    struct daemon *d;

    /* The envelope as received (owned): raw text for requeue and dead letters,
     * parsed object for the executor. */
    char *raw;
    size_t raw_len;
    size_t unread_len;          /* an envelope too long to read: its length, raw "" */
    int64_t parsed_bytes;       /* what its executor holds for it beyond the envelope,
                                 * charged to held_bytes (runner_charge_parsed()) */
    json_t *envelope;           /* NULL for a message that did not parse */
    json_t *spec;               /* what the type parses: the envelope (a reference) */
    const char *type;           /* points into envelope; "" when unreadable */

    /* Source. */
    enum job_source source;
    char *stream;               /* SOURCE_STREAM: stream key (owned) */
    char entry_id[48];          /* SOURCE_STREAM: entry id */
    struct job *parent;         /* SOURCE_CHILD: the group job */
    int child_index;

    /* Settings from the envelope (or the config's defaults). */
    int64_t timeout_ms;
    struct retry_policy retry;
    char *reply_to;             /* owned, NULL when none */
    int64_t result_ttl;         /* seconds */
    int64_t due_ms;             /* run no earlier than this (ms since epoch), 0: now */
    bool delay_waited;          /* put back by the scheduler once due_ms passed */
    int64_t early_due;          /* put back before its time by a cancel sweep:
                                 * that time (scheduler.h), else 0 */

    /* Bookkeeping. */
    int attempts;               /* attempts started, this one included */
    int64_t queued_at, started_at, finished_at;   /* ms since the epoch */
    int64_t deadline;           /* this attempt's end, timer_deadline() */
    int64_t taken_mono;         /* when this daemon took it (monotonic ms) */
    enum job_state state;
    enum stop_reason stop;
    struct event *timer;        /* attempt timeout */
    atomic_int cancel_flag;     /* set from the loop, read by pool threads */

    /* Executor state (owned by the executor). */
    void *exec_state;
    /* A top-level job: its tree's turn in the thread pool, which the pool
     * alone touches (job_pool_owner()). */
    struct pool_owner pool_owner;

    /* Outcome. */
    enum job_status status;
    json_t *result;             /* owned */
    struct job_error error;
    /* A group that did not succeed: its children's records, in input order,
     * added to the record's error as "results" (owned). */
    json_t *error_results;
    /* A group child's final outcome: the bytes its record adds to its
     * top-level group's, counted there (exec_group.c); 0 until then. */
    int64_t kept_bytes;

    /* What must still be written to Redis for this job (enum job_write in
     * result.h) and, for a retry or delay, when it is due. */
    int write_kind;
    int64_t write_due;
    bool write_waiting;         /* in the runner's backlog until Redis is back */
    bool write_refused;         /* a write failed once (warned about) */
    /* Redis refused one of its writes, said at error level: once, not at
     * every resend, yet not hidden by an earlier outage's warning. */
    bool refusal_said;
    bool dead_written;          /* its dead letter is in NS:dead already (the
                                 * scheduler's mover wrote it): the record only */
    char write_nonce[200];      /* NS:scheduled member's nonce, the same on a resend */

    /* Runner bookkeeping: on its list of live jobs, hash chain by id. */
    struct list_link live_link;
    struct job *hnext;
    /* JOB_QUEUED: a top-level job on the runner's queue for a slot, or a
     * group child on its top-level job's list of children waiting for a
     * child slot (limits.max_group_children); the runner takes the next
     * child from each such top-level job in turn. */
    struct list_link wait_link;
    struct list waiting;        /* a top-level job: its tree's waiting children */
    struct list_link turn_link; /* a top-level job with children waiting: the rotation */
};

/* For executors: the attempt ended. Exactly one of these per start(), also
 * after cancel(). job_succeed steals RESULT (which must be a JSON object). */
void job_succeed(struct job *job, json_t *result);
void job_fail(struct job *job, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like job_fail but with a prepared error (http status, sqlstate...). */
void job_fail_with(struct job *job, const struct job_error *err);

/* Fill an error. */
void job_error_set(struct job_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

const char *job_status_name(enum job_status status);

/* The top-level job of JOB's group tree (JOB itself when it has no parent). */
struct job *job_root(struct job *job);
/* Whom JOB's pool tasks are for: its top-level job, so a whole group tree
 * takes one turn among the pool's owners (threadpool.h) and one big group
 * does not hold back every other job's hash or file work. */
struct pool_owner *job_pool_owner(struct job *job);

/* PROTOCOL §2: is this failure worth another attempt? */
bool job_error_is_transient(const struct job_error *err);

/* PROTOCOL §2 backoff: the wait before attempt N+1, after attempt N (N >= 1)
 * failed. rnd01 is a uniform random number in [0, 1) used for jitter. */
int64_t retry_delay_ms(const struct retry_policy *policy, int attempt, double rnd01);

/* Milliseconds since the epoch, and on the monotonic clock. */
int64_t now_ms(void);
int64_t mono_ms(void);

#endif
