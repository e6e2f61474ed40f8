/* pgpool.c - non-blocking libpq connections on the loop (see pgpool.h).
 *
 * Rules from libpq 15 that shape this file: connect with
 * PQconnectStartParams and drive PQconnectPoll, re-reading PQsocket() at every
 * step, under our own deadline (connect_timeout is ignored in this mode); then
 * PQsetnonblocking, PQsend*, PQflush until 0, PQconsumeInput on readable and
 * PQgetResult while !PQisBusy. Never PQexec. PQcancel blocks, so it runs on a
 * pool thread. Results are read one row at a time (single-row mode) so a cap
 * on rows and bytes holds while the result streams in.
 *
 * Every connection is in pipeline mode (PQenterPipelineMode): a query is sent
 * whole at once as [SET statement_timeout, Sync] when the connection's value
 * differs, [Prepare] the first time a named query runs there, then Execute and
 * Sync, then for a query that may leave session state behind (sql_session.h)
 * what undoes it and a Sync (send_reset()); its results are read back in
 * that order. With postgres.pipeline = 1
 * a connection carries one query at a time, as without pipeline mode.
 *
 * A cancel stops whatever the backend runs when it arrives. It is sent only
 * for the query at the head of a connection's pipeline, but it can race that
 * query's end and hit the next one: a query that fails with query_canceled
 * (57014) without having been cancelled itself, after a cancel went to its
 * connection, is sent again once (it was rolled back: its own transaction).
 */
#include <event2/event.h>
#include <event2/event_struct.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "jsonw.h"
#include "log.h"
#include "pgpool.h"
#include "sql_session.h"
#include "threadpool.h"
#include "timer.h"

#define CONNECT_TIMEOUT_MS 5000
#define TICK_MS 250
#define BACKOFF_MAX_MS 5000
#define CANCEL_AGAIN_MS 500
#define STOP_GIVE_UP_MS 5000       /* a stopped query not back by then: drop its connection */
#define UNKNOWN_RUN_US 1000000     /* a query's run time until measured */
#define PROBE_EVERY_US 1000000     /* at most one packing probe a second per query */
#define CANCEL_THREADS 2           /* threads of their own for PQcancel (see send_cancel) */
#define STAND_IN_KEEP_MS (10 * 60 * 1000)  /* an answer kept for a retry (see stand_in()) */
/* Bounds on what is kept for retries, so that a storm of timeouts (a slow
 * database, a hostile producer) cannot grow memory, or the walk each sql
 * job's submit makes over them, without end. Past them a retry runs its
 * statement again: at least once, as without stand-ins. */
#define STAND_INS_MAX 1000
#define STAND_IN_BYTES_MAX (64u << 20)
/* Kept stand-ins are found by job id in a table of this many chains (a
 * power of two): at STAND_INS_MAX, one a chain on average. */
#define STAND_IN_BUCKETS 1024
#define NOTICE_MAX_LEN 300         /* bytes of a server notice's text that are logged */
#define NOTICES_PER_SECOND 10      /* server notices logged a second, the pool over */

enum conn_state { C_CONNECTING, C_READY };
enum step { STEP_SET_TIMEOUT = 1, STEP_PREPARE, STEP_EXECUTE, STEP_SYNC, STEP_RESET };

struct pg_conn {
    struct pgpool *pool;
    PGconn *pg;
    enum conn_state state;
    struct event ev;            /* one persistent event, re-armed only when */
    short ev_what;              /* the interest or the socket changes */
    int ev_fd;
    int64_t started, idle_since;
    int64_t statement_timeout;  /* as last sent to the server; -1 unknown */
    json_t *prepared;           /* statement names prepared (or sent) here */
    struct sql_query *head, *tail;  /* sent, answers pending, in order */
    int inflight;
    int64_t expected_us;        /* the estimated run times of those, summed */
    int64_t last_answer_us;     /* mono_us() of the last answer read here */
    int64_t last_answer_sent_us; /* and when that answer's query was sent */
    const struct sql_query *cancel_for; /* the query a cancel was last sent for */
    int64_t cancel_sent_at;     /* mono ms */
    const struct sql_query *stopping; /* the head query being stopped, and since when */
    int64_t stopping_since;     /* mono ms: first cancel sent (or tried) for it */
    uint64_t serial;            /* names it to a cancel task that outlives it */
    int cancels_pending;        /* cancel requests queued or being sent */
    uint64_t cancels_delivered; /* cancel requests the server has taken */
    int round_sends;            /* queries sent in this dispatch() round */
    bool corked;
    bool alone_inflight;        /* a query that may change the session runs here alone */
    bool retire;                /* close once idle: session state was changed */
    struct pg_conn *next;
};

/* Queries answered while reading a connection: their done() callbacks run
 * after the connection is no longer touched, since done() may start another
 * job whose query breaks and frees that very connection. */
struct answered {
    struct sql_query *head, *tail;
};

/* What the pool has measured of one query name (see measure()). */
struct run_time {
    char *name;                 /* "" for raw SQL */
    int64_t alone;              /* us, moving average, 0: never measured */
    int64_t behind;             /* us, moving average, 0: never measured */
    int64_t behind_at;          /* mono_us() of the last behind sample */
    int64_t probed_at;          /* mono_us() of the last probe sent */
    struct run_time *next;
};

struct pgpool {
    struct daemon *d;
    struct pg_conn *conns;
    int nconns;
    struct sql_query *wait_head, *wait_tail;
    int nwaiting;
    struct sql_query *parked_head, *parked_tail; /* waiting for their stand-ins */
    bool unpark_due;            /* a stand-in answered or went: see unpark() */
    /* Those kept for a retry (see stand_in()), chained by their job id's
     * hash: a sql job's submit looks here, and stays O(1) after a storm of
     * timeouts filled it. */
    struct stand_in *stand_ins[STAND_IN_BUCKETS];
    int nstand_ins;             /* in stand_ins; at most STAND_INS_MAX */
    size_t stand_in_bytes;      /* their text, params, answers' rows; at most STAND_IN_BYTES_MAX */
    struct event *tick;
    struct event *kick;         /* dispatch() once the current loop pass ends */
    struct threadpool *cancels; /* PQcancel's threads, not the jobs' */
    struct run_time *run_times; /* one per query name run so far */
    int64_t next_connect;       /* mono ms: backoff after a failed connect */
    int failures;
    uint64_t queries, errors, reconnects, probes;
    uint64_t conn_serials;
    struct log_limit notices;   /* server notices logged, NOTICES_PER_SECOND at most */
};

static void dispatch(struct pgpool *pool);
static void on_io(evutil_socket_t fd, short what, void *arg);

/* ---- connections ----------------------------------------------------------- */

/* epoll_ctl on every step of every query costs more than the query on a
 * local server: keep the event and touch it only when something changed. */
static void watch(struct pg_conn *c, short what)
{
    int fd = PQsocket(c->pg);
    if (c->ev_what == what && c->ev_fd == fd)
        return;
    if (c->ev_what)
        event_del(&c->ev);
    event_assign(&c->ev, c->pool->d->base, fd, (short)(what | EV_PERSIST), on_io, c);
    event_add(&c->ev, NULL);
    c->ev_what = what;
    c->ev_fd = fd;
}

static void conn_close(struct pg_conn *c)
{
    struct pgpool *pool = c->pool;
    for (struct pg_conn **p = &pool->conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pool->nconns--;
    if (c->ev_what)
        event_del(&c->ev);
    PQfinish(c->pg);
    json_decref(c->prepared);
    free(c);
}

/* Q at the end of the FIFO HEAD..TAIL (the wait queue, a pipeline, ...). */
static void append(struct sql_query **head, struct sql_query **tail, struct sql_query *q)
{
    q->next = NULL;
    if (*tail)
        (*tail)->next = q;
    else
        *head = q;
    *tail = q;
}

/* Q out of the FIFO HEAD..TAIL; false when it was not there. */
static bool take_out(struct sql_query **head, struct sql_query **tail, struct sql_query *q)
{
    struct sql_query *prev = NULL;
    for (struct sql_query *t = *head; t; prev = t, t = t->next) {
        if (t != q)
            continue;
        if (prev)
            prev->next = q->next;
        else
            *head = q->next;
        if (*tail == q)
            *tail = prev;
        q->next = NULL;
        return true;
    }
    return false;
}

static void free_scratch(struct sql_query *q)
{
    json_decref(q->fields);
    q->fields = NULL;
    free(q->types);
    q->types = NULL;
}

/* Q as before it was sent: no answer, no error, on no connection. */
static void reset_answer(struct sql_query *q)
{
    json_decref(q->rows);
    q->rows = NULL;
    free_scratch(q);
    memset(&q->err, 0, sizeof(q->err));
    q->command[0] = '\0';
    q->row_count = 0;
    q->bytes = 0;
    q->too_large = false;
    q->conn = NULL;
}

static void stand_in_done(struct sql_query *s);

/* Hand Q back to its owner: rows only on success, the scratch state freed. */
static void query_complete(struct pgpool *pool, struct sql_query *q)
{
    q->conn = NULL;
    if (q->err.code) {
        pool->errors += q->done != stand_in_done;   /* its query's error was counted */
        json_decref(q->rows);
        q->rows = NULL;
    } else if (!q->rows) {
        q->rows = json_array();
    }
    free_scratch(q);
    q->done(q);
}

static void answered_complete(struct pgpool *pool, struct answered *a)
{
    struct sql_query *q;
    while ((q = a->head)) {
        a->head = q->next;
        query_complete(pool, q);
    }
    a->tail = NULL;
}

/* libpq's messages end in a newline and may run on: keep the first line. */
static void first_line(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src);
    dst[strcspn(dst, "\n")] = '\0';
}

static void fail_waiting(struct pgpool *pool, const char *why)
{
    struct sql_query *q;
    while ((q = pool->wait_head)) {
        pool->wait_head = q->next;
        pool->nwaiting--;
        job_error_set(&q->err, ERR_UNAVAILABLE, "PostgreSQL is unreachable: %s", why);
        query_complete(pool, q);
    }
    pool->wait_tail = NULL;
}

static bool any_usable(const struct pgpool *pool)
{
    for (const struct pg_conn *c = pool->conns; c; c = c->next)
        if (c->state != C_CONNECTING)
            return true;
    return false;
}

static void connect_failed(struct pg_conn *c, const char *why)
{
    struct pgpool *pool = c->pool;
    char msg[256];
    first_line(msg, sizeof(msg), why);
    pool->failures++;
    int64_t delay = 100LL << (pool->failures < 6 ? pool->failures : 6);
    pool->next_connect = mono_ms() + (delay < BACKOFF_MAX_MS ? delay : BACKOFF_MAX_MS);
    log_msg(pool->failures == 1 ? LOG_WARN : LOG_DEBUG, "postgres: connect failed: %s", msg);
    conn_close(c);
    /* Queries must not wait on a server that is down: they fail as
     * unavailable (transient, so the runner retries them later). */
    if (!any_usable(pool))
        fail_waiting(pool, msg);
}

static void connect_step(struct pg_conn *c, PostgresPollingStatusType st)
{
    /* While connecting libpq may close a socket and open another that gets
     * the same number: always re-register. */
    if (c->ev_what) {
        event_del(&c->ev);
        c->ev_what = 0;
    }
    switch (st) {
    case PGRES_POLLING_READING: watch(c, EV_READ); break;
    case PGRES_POLLING_WRITING: watch(c, EV_WRITE); break;
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->pg, 1) || !PQenterPipelineMode(c->pg)) {
            connect_failed(c, "cannot make the connection non-blocking and pipelined");
            return;
        }
        if (c->pool->failures)
            log_notice("postgres: connected again");
        c->pool->failures = 0;
        c->state = C_READY;
        c->idle_since = mono_ms();
        watch(c, EV_READ);      /* idle: notice at once when the server closes it */
        dispatch(c->pool);
        break;
    default: connect_failed(c, PQerrorMessage(c->pg)); break;
    }
}

/* A server notice (RAISE NOTICE, "relation ... already exists, skipping").
 * libpq's default printed it raw on stderr: no timestamp or level, deaf to
 * log.level, and a newline in it (job data, in a RAISE) started a forged
 * log line. Here it goes through the logger, which makes control
 * characters harmless, cut to NOTICE_MAX_LEN, at debug (a WARNING at
 * info), naming the job whose query runs on the connection. */
static void on_notice(void *arg, const PGresult *res)
{
    struct pg_conn *c = arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    int level = severity && !strcmp(severity, "WARNING") ? LOG_INFO : LOG_DEBUG;
    /* NOTICES_PER_SECOND at most: one query can RAISE a notice per row. */
    if (level < log_get_level() || !log_limit_allow(&c->pool->notices))
        return;
    if (!msg)
        msg = "";
    int len = (int)strnlen(msg, NOTICE_MAX_LEN);
    while (len > 0 && msg[len] && ((unsigned char)msg[len] & 0xC0) == 0x80)
        len--;      /* cut before a UTF-8 character, not inside it */
    const char *job = c->head && c->head->job_id ? c->head->job_id : NULL;
    log_msg(level, "%s%s%spostgres %s (%s): %.*s%s", job ? "job " : "", job ? job : "",
            job ? ": " : "", severity ? severity : "notice", state ? state : "?", len, msg,
            msg[len] ? "..." : "");
}

static void conn_open(struct pgpool *pool)
{
    const char *keys[] = {"dbname", "application_name", "client_encoding", NULL};
    const char *vals[] = {pool->d->cfg.pg_conninfo, "jobd", "UTF8", NULL};
    struct pg_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->pool = pool;
    c->serial = ++pool->conn_serials;
    c->statement_timeout = -1;
    c->prepared = json_object();
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (c->pg)      /* before any message: the server may warn at the start-up */
        PQsetNoticeReceiver(c->pg, on_notice, c);
    c->state = C_CONNECTING;
    c->started = mono_ms();
    c->next = pool->conns;
    pool->conns = c;
    pool->nconns++;
    if (pool->failures)
        pool->reconnects++;
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed(c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    connect_step(c, PGRES_POLLING_WRITING);
}

static void query_answered(struct pg_conn *c, struct sql_query *q, struct answered *out);

/* Whether Q's own answer is complete: the Sync after its Execute was read,
 * so its statement committed (or failed) whatever happens to the steps
 * after it, the reset of its session (send_reset()). */
static bool answer_in(const struct sql_query *q)
{
    for (int i = 0; i + 1 < q->step; i++)
        if (q->steps[i] == STEP_EXECUTE)
            return true;
    return false;
}

/* Close C under its queries: each ends unavailable (transient: retried)
 * with MSG, but KEEP (NULL: none), whose own error is already set, and a
 * head query whose answer is in: failed as unavailable, a statement that
 * committed was retried and ran twice. */
static void conn_close_failing(struct pg_conn *c, const char *msg, struct sql_query *keep)
{
    struct pgpool *pool = c->pool;
    struct answered done = {NULL, NULL};
    if (c->head && c->head != keep && answer_in(c->head)) {
        log_info("postgres: connection lost while releasing what %s%s left on its session; "
                 "its answer stands",
                 c->head->name ? "query " : "raw SQL", c->head->name ? c->head->name : "");
        c->head->left_state = true;
        query_answered(c, c->head, &done);
    }
    struct sql_query *q = c->head;
    c->head = c->tail = NULL;
    /* None of them may point at C once it is freed: done() of the first can
     * cancel the others (a group's siblings). */
    for (struct sql_query *t = q; t; t = t->next)
        t->conn = NULL;
    conn_close(c);
    while (q) {
        struct sql_query *next = q->next;
        if (q != keep)
            job_error_set(&q->err, ERR_UNAVAILABLE, "%s", msg);
        query_complete(pool, q);
        q = next;
    }
    answered_complete(pool, &done);
}

/* The connection died under its queries: each is unavailable (transient). */
static void conn_lost(struct pg_conn *c, const char *why)
{
    char msg[256], err[300];
    first_line(msg, sizeof(msg), why);
    log_warn("postgres: connection lost: %s", msg);
    snprintf(err, sizeof(err), "connection to PostgreSQL lost: %s", msg);
    conn_close_failing(c, err, NULL);
}

static void conn_broken(struct pg_conn *c)
{
    conn_lost(c, PQerrorMessage(c->pg));
}

/* ---- cancel ---------------------------------------------------------------- */

struct cancel_task {
    struct pool_task task;
    struct pgpool *pool;
    uint64_t conn_serial;
    PGcancel *cancel;
    char err[256];
    int ok;
};

static void cancel_work(struct pool_task *t)
{
    struct cancel_task *ct = (struct cancel_task *)t;
    ct->ok = PQcancel(ct->cancel, ct->err, sizeof(ct->err));
}

static void cancel_done(struct pool_task *t)
{
    struct cancel_task *ct = (struct cancel_task *)t;
    if (!ct->ok && !t->skipped)
        log_warn("postgres: cancel request failed: %s", ct->err);
    for (struct pg_conn *c = ct->pool->conns; c; c = c->next)
        if (c->serial == ct->conn_serial) {
            c->cancels_pending--;
            c->cancels_delivered += ct->ok && !t->skipped;
            break;
        }
    PQfreeCancel(ct->cancel);
    free(ct);
}

/* Stop Q, the query at the head of C's pipeline. PQcancel blocks (a new
 * connection to the server): a pool thread sends it while the loop goes on
 * reading this connection. */
static void send_cancel(struct pg_conn *c, const struct sql_query *q)
{
    if (c->cancel_for == q)
        return;
    if (c->stopping != q) {
        c->stopping = q;
        c->stopping_since = mono_ms();
    }
    /* Tried again by cancel_again() if it cannot go now, or if one still
     * waits for a pool thread (no pile of them behind slow hash jobs). */
    c->cancel_for = q;
    c->cancel_sent_at = mono_ms();
    if (c->cancels_pending)
        return;
    struct cancel_task *ct = calloc(1, sizeof(*ct));
    if (!ct || !(ct->cancel = PQgetCancel(c->pg))) {
        free(ct);
        return;
    }
    ct->task.work = cancel_work;
    ct->task.done = cancel_done;
    ct->pool = c->pool;
    ct->conn_serial = c->serial;
    /* PQcancel has no timeout: against a server that accepts and never
     * answers it blocks until the server comes back. On the jobs' pool that
     * stopped every hash and file job; here it holds only a cancel thread. */
    if (threadpool_submit(c->pool->cancels ? c->pool->cancels : c->pool->d->pool, &ct->task)) {
        PQfreeCancel(ct->cancel);
        free(ct);
        return;     /* statement_timeout is the second guard */
    }
    c->cancels_pending++;
}

/* A cancel that reaches the backend between two queries is forgotten (the
 * backend clears it when it goes idle), and in a pipeline the next query may
 * start just after: while a cancelled query still runs, cancel it again. */
static void cancel_again(struct pg_conn *c, int64_t now)
{
    struct sql_query *q = c->head;
    if (q && (q->cancelled || q->too_large) && c->cancel_for == q &&
        now - c->cancel_sent_at >= CANCEL_AGAIN_MS) {
        c->cancel_for = NULL;
        send_cancel(c, q);
    }
}

/* A named query's statement name carries a hash of its name and text: after
 * a reload that changes the text, connections prepare the new one under a
 * new name instead of running what they prepared before. The name is cut to
 * 40 bytes, since PostgreSQL cuts identifiers at 63. */
static uint32_t fnv1a(uint32_t h, const char *s)
{
    for (const char *p = s; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h;
}

static void statement_name(const struct sql_query *q, char *buf, size_t len)
{
    uint32_t h = fnv1a(2166136261u, q->name);
    h *= 16777619u;             /* a NUL between the two */
    h = fnv1a(h, q->sql);
    snprintf(buf, len, "q_%.40s_%08x", q->name, h);
}

/* ---- stand-ins ------------------------------------------------------------ */

/* A query sent behind another on its connection cannot be taken back: the
 * server runs its statement when its turn comes. Timed out or cancelled
 * before then, its attempt still ends at once (it used to wait for the
 * query ahead, past its own timeout), and a stand-in takes its place in the
 * pipeline: it reads what the statement does, and cancels it when its turn
 * comes (a quick one may end before the cancel arrives).
 *
 * A timed-out job is retried, and its retry comes back through
 * NS:scheduled as a new job with the same id: the stand-in is found by that
 * id. The retry waits for it (parked) instead of being sent, and if the
 * statement ran to its end after all, takes its answer rather than running
 * it a second time (a timed-out INSERT inserted two rows); if it failed or
 * was cancelled (rolled back: its own transaction), the retry sends it. An
 * answer is kept STAND_IN_KEEP_MS for a retry that comes to this daemon. */

struct stand_in {
    struct sql_query q;         /* in Q's place on its connection until answered */
    struct pgpool *pool;
    char job_id[129];
    char **params;              /* with q.name, q.sql: the retry runs the same */
    int64_t answered_at;        /* mono ms; 0 while its answer is not in */
    size_t kept_bytes;          /* its text, params and rows, counted in pool->stand_in_bytes */
    struct stand_in *next;      /* in its chain of pool->stand_ins, if kept */
};

static void stand_in_free(struct stand_in *s)
{
    json_decref(s->q.rows);
    free_scratch(&s->q);
    free((char *)s->q.name);
    free((char *)s->q.sql);
    for (int i = 0; s->params && i < s->q.nparams; i++)
        free(s->params[i]);
    free(s->params);
    free(s);
}

static char *strdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* A stand-in for Q's statement: its job id, name, text and params copied
 * (Q's memory goes with its job). NULL when out of memory. */
static struct stand_in *stand_in_new(struct pgpool *pool, const struct sql_query *q)
{
    struct stand_in *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->pool = pool;
    snprintf(s->job_id, sizeof(s->job_id), "%s", q->job_id ? q->job_id : "");
    s->q.job_id = s->job_id;
    s->q.name = strdup_or_null(q->name);
    s->q.sql = strdup_or_null(q->sql);
    s->q.nparams = q->nparams;
    s->params = calloc((size_t)q->nparams + 1, sizeof(char *));
    bool ok = s->params && (s->q.name || !q->name) && (s->q.sql || !q->sql);
    for (int i = 0; ok && i < q->nparams; i++)
        ok = (s->params[i] = strdup_or_null(q->params[i])) || !q->params[i];
    if (!ok) {
        stand_in_free(s);
        return NULL;
    }
    return s;
}

static bool same_text(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

static struct stand_in **stand_in_chain(struct pgpool *pool, const char *job_id)
{
    return &pool->stand_ins[fnv1a(2166136261u, job_id) & (STAND_IN_BUCKETS - 1)];
}

/* The stand-in kept for job JOB_ID: one at most (stand_in_keep()). */
static struct stand_in *stand_in_by_id(struct pgpool *pool, const char *job_id)
{
    struct stand_in *s = *stand_in_chain(pool, job_id);
    while (s && strcmp(s->job_id, job_id))
        s = s->next;
    return s;
}

/* Whether S is kept for a retry (in the table), rather than only standing
 * in on its connection until its answer comes. */
static bool stand_in_kept(struct pgpool *pool, struct stand_in *s)
{
    return stand_in_by_id(pool, s->job_id) == s;
}

/* The stand-in kept for Q's job, if it ran the very statement Q would:
 * a producer may reuse an id for another query. */
static struct stand_in *stand_in_find(struct pgpool *pool, const struct sql_query *q)
{
    struct stand_in *s = q->job_id ? stand_in_by_id(pool, q->job_id) : NULL;
    if (!s)
        return NULL;
    bool same = same_text(s->q.name, q->name) && same_text(s->q.sql, q->sql) &&
                s->q.nparams == q->nparams;
    for (int i = 0; same && i < q->nparams; i++)
        same = same_text(s->params[i], q->params[i]);
    return same ? s : NULL;
}

/* S out of the table, its bytes no longer counted (S is not freed). */
static void stand_in_unlink(struct pgpool *pool, struct stand_in *s)
{
    for (struct stand_in **p = stand_in_chain(pool, s->job_id); *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    s->next = NULL;
    pool->nstand_ins--;
    pool->stand_in_bytes -= s->kept_bytes;
    pool->unpark_due = true;    /* a retry parked on it is sent */
}

/* DROP no longer kept for a retry: freed, or, while its statement is still
 * on a connection, freed by stand_in_done() when its answer comes. */
static void stand_in_drop(struct pgpool *pool, struct stand_in *drop)
{
    stand_in_unlink(pool, drop);
    if (drop->answered_at)
        stand_in_free(drop);
}

/* The bytes of S's copies of its statement's text and params: a job's
 * params may take up to limits.max_job_bytes, and a kept stand-in holds
 * them after the job is gone. */
static size_t stand_in_text_bytes(const struct stand_in *s)
{
    size_t n = (s->q.name ? strlen(s->q.name) : 0) + (s->q.sql ? strlen(s->q.sql) : 0);
    for (int i = 0; i < s->q.nparams; i++)
        n += s->params[i] ? strlen(s->params[i]) : 0;
    return n;
}

/* S kept for its job's retry, if the bounds allow: one per job id, so an
 * older one goes (of a job whose id a producer reused for another query; a
 * retry never runs while one waits). */
static bool stand_in_keep(struct pgpool *pool, struct stand_in *s)
{
    struct stand_in *old = stand_in_by_id(pool, s->job_id);
    if (old)
        stand_in_drop(pool, old);
    size_t text = stand_in_text_bytes(s);
    if (pool->nstand_ins >= STAND_INS_MAX || pool->stand_in_bytes + text > STAND_IN_BYTES_MAX) {
        log_info("job %s: what its attempt's query does is not kept for a retry (%d kept "
                 "already, %zu bytes; its text and params %zu bytes); its retry runs the "
                 "query again", s->job_id, pool->nstand_ins, pool->stand_in_bytes, text);
        return false;
    }
    struct stand_in **chain = stand_in_chain(pool, s->job_id);
    s->next = *chain;
    *chain = s;
    pool->nstand_ins++;
    s->kept_bytes = text;
    pool->stand_in_bytes += text;
    return true;
}

/* S's answer is in: counted against STAND_IN_BYTES_MAX, or, past it, not
 * kept, so that its retry runs the statement again. */
static void stand_in_answered(struct pgpool *pool, struct stand_in *s)
{
    s->answered_at = mono_ms();
    pool->unpark_due = true;
    if (s->q.err.code || pool->stand_in_bytes + s->q.bytes <= STAND_IN_BYTES_MAX) {
        size_t rows = s->q.err.code ? 0 : s->q.bytes;
        s->kept_bytes += rows;
        pool->stand_in_bytes += rows;
        return;
    }
    log_info("job %s: the answer of a query its attempt gave up on is not kept (%zu bytes "
             "kept for retries already); its retry runs the query again", s->job_id,
             pool->stand_in_bytes);
    json_decref(s->q.rows);
    s->q.rows = NULL;
    job_error_set(&s->q.err, ERR_UNAVAILABLE, "answer not kept");
}

/* A query at the head of its connection, cancelled for a timeout with a
 * retry to come, ran to its end before the cancel reached it: the runner
 * still calls the attempt timed out, and its retry would run the statement
 * again. Its answer is kept for that retry, as a stand-in's is. */
static void keep_answer(struct pgpool *pool, struct sql_query *q)
{
    struct stand_in *s = stand_in_new(pool, q);
    if (!s)
        return;
    if (!stand_in_keep(pool, s)) {
        stand_in_free(s);
        return;
    }
    s->q.rows = q->rows;
    q->rows = NULL;
    memcpy(s->q.command, q->command, sizeof(q->command));
    s->q.row_count = q->row_count;
    s->q.bytes = q->bytes;
    stand_in_answered(pool, s);
}

/* done() of a stand-in: its answer is in (see unpark()). */
static void stand_in_done(struct sql_query *q)
{
    struct stand_in *s = q->arg;
    if (!stand_in_kept(s->pool, s)) {
        stand_in_free(s);       /* nobody will ask for it */
        return;
    }
    stand_in_answered(s->pool, s);
    event_active(s->pool->kick, EV_TIMEOUT, 0);     /* a retry may be parked: unpark() */
}

/* Put a stand-in in Q's place on its connection (Q is not at the head);
 * Q is then on no connection. KEEP: its job may run Q again. False when out
 * of memory: Q stays. */
static bool stand_in(struct pgpool *pool, struct sql_query *q, bool keep)
{
    struct pg_conn *c = q->conn;
    struct stand_in *s = stand_in_new(pool, q);
    if (!s)
        return false;
    const char *name = s->q.name, *sql = s->q.sql;     /* the copies */
    s->q = *q;                  /* its steps, run time estimate, place (next) */
    s->q.name = name;           /* statement_name(), measure(), stand_in_find() */
    s->q.sql = sql;
    s->q.params = (const char *const *)s->params;
    s->q.job_id = s->job_id;
    s->q.done = stand_in_done;
    s->q.arg = s;
    s->q.cancelled = true;      /* stopped when its turn comes */
    s->q.again = false;         /* kept, if at all, as itself (below) */
    if (keep && q->job_id)
        stand_in_keep(pool, s);    /* not kept past the bounds: freed when answered */
    for (struct sql_query **p = &c->head; *p; p = &(*p)->next)
        if (*p == q) {
            *p = &s->q;
            break;
        }
    if (c->tail == q)
        c->tail = &s->q;
    q->conn = NULL;
    q->next = NULL;
    return true;
}

/* Q, parked, takes the answer of its stand-in S, or goes to be sent. */
static void take_stand_in(struct pgpool *pool, struct sql_query *q, struct stand_in *s)
{
    q->parked = false;
    if (!s || s->q.err.code) {
        if (s)
            stand_in_drop(pool, s);
        append(&pool->wait_head, &pool->wait_tail, q);
        pool->nwaiting++;
        return;
    }
    log_info("job %s: the query its attempt before gave up on ran to its end: its answer "
             "is this attempt's, not run again", s->job_id);
    q->rows = s->q.rows;
    s->q.rows = NULL;
    memcpy(q->command, s->q.command, sizeof(q->command));
    q->row_count = s->q.row_count;
    stand_in_drop(pool, s);
    query_complete(pool, q);
}

/* Parked queries whose stand-ins have answered (or gone) go on. One at a
 * time from the start: done() of one may submit or cancel others. Only
 * when one may have: dispatch() calls this at every answer. */
static void unpark(struct pgpool *pool)
{
    if (!pool->unpark_due)
        return;
    pool->unpark_due = false;
    struct sql_query *q = pool->parked_head;
    while (q) {
        struct stand_in *s = stand_in_find(pool, q);
        if (s && !s->answered_at) {
            q = q->next;
            continue;
        }
        take_out(&pool->parked_head, &pool->parked_tail, q);
        take_stand_in(pool, q, s);
        q = pool->parked_head;
    }
}

/* Answers kept longer than STAND_IN_KEEP_MS: no retry came for them here. */
static void stand_ins_expire(struct pgpool *pool, int64_t now)
{
    for (int i = 0; pool->nstand_ins && i < STAND_IN_BUCKETS; i++)
        for (struct stand_in *s = pool->stand_ins[i], *next; s; s = next) {
            next = s->next;
            if (s->answered_at && now - s->answered_at > STAND_IN_KEEP_MS) {
                stand_in_unlink(pool, s);
                stand_in_free(s);
            }
        }
}

/* ---- results --------------------------------------------------------------- */

static json_t *value_of(const PGresult *res, int row, int col, Oid type)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    const char *v = PQgetvalue(res, row, col);
    int len = PQgetlength(res, row, col);
    char *end;
    switch (type) {
    case 20: case 21: case 23: case 26: {      /* int8, int2, int4, oid */
        long long x = strtoll(v, &end, 10);
        if (!*end)
            return json_integer(x);
        break;
    }
    case 700: case 701: {                       /* float4, float8 */
        double x = strtod(v, &end);
        if (!*end && isfinite(x))
            return json_real(x);
        break;                                  /* NaN, Infinity: as text */
    }
    case 16: return json_boolean(v[0] == 't');  /* bool */
    case 114: case 3802: {                      /* json, jsonb */
        /* Nested deeper than a record can hold (jsonw.h): as text, or the
         * record could not be read back. */
        json_t *doc = json_loadb(v, (size_t)len, JSON_DECODE_ANY, NULL);
        if (doc && !jsonw_too_deep(doc, (size_t)len))
            return doc;
        json_decref(doc);
        break;
    }
    }
    json_t *text = json_stringn(v, (size_t)len);
    return text ? text : json_string("");
}

/* What V adds to the record as JSON text: a string quoted and escaped;
 * integers and embedded JSON about the length of the text they came from
 * (the latter rewritten compact); a double at most %.17g's 24. */
static size_t value_bytes(const json_t *v, int text_len)
{
    switch (json_typeof(v)) {
    case JSON_STRING: return jsonw_string_len(json_string_value(v), json_string_length(v));
    case JSON_NULL:
    case JSON_TRUE: return 4;
    case JSON_FALSE: return 5;
    case JSON_REAL: return 24;
    default: return (size_t)text_len;
    }
}

static void take_row(struct sql_query *q, const PGresult *res, int r)
{
    int ncols = PQnfields(res);
    if (!q->fields) {
        q->fields = json_array();
        q->types = calloc((size_t)ncols + 1, sizeof(Oid));
        /* Every row repeats the column names: counted once here, per row
         * below ("{", "}", a "," after the row; "name": and a "," each). The
         * old count, values + 8 a field, let a wide result of long names
         * and short values take ~50 times SQL_MAX_BYTES. */
        q->row_bytes = 3;
        for (int i = 0; i < ncols; i++) {
            const char *name = PQfname(res, i);
            json_array_append_new(q->fields, json_string(name));
            q->types[i] = PQftype(res, i);
            q->row_bytes += jsonw_string_len(name, strlen(name)) + 2;
        }
        if (!q->rows)
            q->rows = json_array();
    }
    if (q->too_large)
        return;
    json_t *row = json_object();
    q->bytes += q->row_bytes;
    for (int i = 0; i < ncols; i++) {
        json_t *v = value_of(res, r, i, q->types[i]);
        q->bytes += value_bytes(v, PQgetlength(res, r, i));
        json_object_set_new(row, json_string_value(json_array_get(q->fields, (size_t)i)), v);
    }
    json_array_append_new(q->rows, row);
    if (json_array_size(q->rows) > SQL_MAX_ROWS || q->bytes > SQL_MAX_BYTES) {
        /* Stop the query on the server instead of reading it to the end. */
        q->too_large = true;
        json_decref(q->rows);
        q->rows = json_array();
        send_cancel(q->conn, q);
    }
}

/* Whether RES is the server refusing the job's parameters ("bind message
 * supplies 1 parameters, but prepared statement requires 2"). That is
 * SQLSTATE 08P01, protocol_violation, whose class 08 is otherwise retried as
 * a broken connection; but here the server raised it as a plain ERROR at the
 * Bind of the execute step and the connection goes on. The producer's
 * mistake, as a wrong field is: the same params fail every time. (The
 * statement's own parameter count is not known before: its Prepare goes in
 * the same packet as the first Execute.) */
static bool params_refused(const struct pg_conn *c, enum step step, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    return step == STEP_EXECUTE && state && !strcmp(state, "08P01") && severity &&
           !strcmp(severity, "ERROR") && PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) &&
           PQstatus(c->pg) == CONNECTION_OK;
}

/* Whether a query sent after Q on its connection prepares Q's statement
 * again (sent after the failed Prepare that Q relied on was answered). */
static bool prepared_again_behind(const struct sql_query *q)
{
    for (const struct sql_query *t = q->next; t; t = t->next)
        if (t->name && memchr(t->steps, STEP_PREPARE, (size_t)t->nsteps) &&
            !strcmp(t->name, q->name) && !strcmp(t->sql, q->sql))
            return true;
    return false;
}

/* Whether RES is named query Q finding its statement gone (26000) at its
 * Execute, with no new Prepare of it on the way: it is to be prepared
 * again. A query pipelined behind the first use of its name sends no
 * Prepare of its own (one is on the way): when that one fails (its table
 * does not exist yet...), the Execute meets no statement. The same when
 * something else on the session deallocated it. Either way Q is sent
 * again, once, as an unnamed statement (query_answered()): nothing of it
 * ran. */
static bool lost_statement(const struct sql_query *q, enum step step, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return q->name && step == STEP_EXECUTE && state && !strcmp(state, "26000") &&
           !prepared_again_behind(q);
}

static void take_result(struct pg_conn *c, struct sql_query *q, enum step step, PGresult *res)
{
    ExecStatusType status = PQresultStatus(res);
    switch (status) {
    case PGRES_SINGLE_TUPLE: take_row(q, res, 0); break;
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        if (step == STEP_RESET && PQnfields(res) > 1 && PQntuples(res) == 1)
            q->left_state = PQgetvalue(res, 0, 1)[0] == 't';    /* see send_reset() */
        if (step != STEP_EXECUTE)
            break;
        /* Rows here too when single-row mode could not be set. */
        for (int r = 0; r < PQntuples(res) && !q->too_large; r++)
            take_row(q, res, r);
        q->executed = true;
        if (status == PGRES_EMPTY_QUERY) {
            q->command[0] = '\0';
            break;
        }
        snprintf(q->command, sizeof(q->command), "%s", PQcmdStatus(res));
        const char *n = PQcmdTuples(res);
        q->row_count = *n ? atoll(n) : (q->rows ? (long long)json_array_size(q->rows) : 0);
        if (!strncmp(q->command, "SELECT", 6) && q->rows)
            q->row_count = (long long)json_array_size(q->rows);
        break;
    case PGRES_PIPELINE_ABORTED: break;    /* an earlier step's error says why */
    default:
        if (step == STEP_PREPARE || lost_statement(q, step, res)) {
            char stmt[64];          /* the next one prepares it again */
            statement_name(q, stmt, sizeof(stmt));
            json_object_del(c->prepared, stmt);
        }
        if (step == STEP_RESET) {
            /* Its own Sync: the job's answer stands. What its statement
             * left (a lock) may still be there: the connection goes. */
            q->left_state = true;
            log_info("postgres: releasing what query %s left on its session failed (%s)",
                     q->name ? q->name : "(raw SQL)",
                     PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                         ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : "?");
            break;
        }
        if (step == STEP_SET_TIMEOUT) {
            /* Its own Sync: the query runs whatever happened to the SET (a
             * late cancel meant for the query before it can land here).
             * Taken as the query's error, it made a query that ran and
             * committed look failed, or be sent again and run twice. The
             * setting is now unknown and is sent again next time; the
             * runner's timer stays the first guard meanwhile. */
            c->statement_timeout = -1;
            log_info("postgres: setting statement_timeout failed (%s); the query runs without it",
                     PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                         ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : "?");
            break;
        }
        if (!q->err.code) {
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            if (params_refused(c, step, res))
                job_error_set(&q->err, ERR_INVALID_JOB, "sql.params: %s", msg);
            else
                job_error_set(&q->err, ERR_SQL_ERROR, "%s", msg ? msg : PQresultErrorMessage(res));
            snprintf(q->err.sqlstate, sizeof(q->err.sqlstate), "%s", state ? state : "");
        }
        break;
    }
}

/* ---- how long queries run ------------------------------------------------- */

/* Per query name (struct run_time), two moving averages of what its answers
 * showed (0: none yet):
 *   alone   sent to an idle connection: from the send to its answer, the
 *           round trip and the backend's wake-up included;
 *   behind  sent behind other queries on a busy connection: from the answer
 *           before it to its own, which is what it adds to the wait of a
 *           query queued behind it.
 * Packing is decided by behind. alone is the wrong measure for it,
 * and a self-reinforcing one: on a loaded machine (or with a distant server)
 * it grows with every wait for a core, packing stops, each query wakes its
 * own backend, and the machine gets busier still. Measured on 2 cores, 20
 * connections, 100,000 sql jobs flat out then 7,700/s, five interleaved
 * pairs: 13,300-14,600 -> 18,100-19,900 jobs/s, PostgreSQL 93-102 -> 63-69
 * us of CPU a query, p99 at 7,700/s 38-75 -> 16-55 ms. */
static struct run_time *run_time(const struct pgpool *pool, const struct sql_query *q)
{
    const char *name = q->name ? q->name : "";
    for (struct run_time *t = pool->run_times; t; t = t->next)
        if (!strcmp(t->name, name))
            return t;
    return NULL;
}

/* What Q adds to the wait of a query queued behind it: its behind, else
 * (never measured behind another yet) its alone. Never run: taken as
 * slow (a second, and more than the packing budget), so nothing queues
 * behind it by choice. */
static int64_t expected_run_us(const struct pgpool *pool, const struct sql_query *q)
{
    const struct run_time *t = run_time(pool, q);
    int64_t budget = pool->d->cfg.pg_pipeline_pack_us;
    if (!t)
        return budget >= UNKNOWN_RUN_US ? budget + 1 : UNKNOWN_RUN_US;
    int64_t est = t->behind ? t->behind : t->alone;
    return est > 0 ? est : 1;
}

static void measure(struct pgpool *pool, struct pg_conn *c, const struct sql_query *q)
{
    int64_t now = mono_us(), took;
    if (q->sent_behind) {
        /* The gap since the answer before it, less the part that Q's being
         * sent later than that query explains (the same way there and back
         * for both): what is left is Q's run on the server. */
        int64_t later = q->sent_us - c->last_answer_sent_us;
        took = now - c->last_answer_us - (later > 0 ? later : 0);
    } else {
        took = now - q->sent_us;
    }
    c->last_answer_us = now;
    c->last_answer_sent_us = q->sent_us;
    struct run_time *t = run_time(pool, q);
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t || !(t->name = strdup(q->name ? q->name : ""))) {
            free(t);
            return;     /* out of memory: this sample is lost, nothing else */
        }
        t->next = pool->run_times;
        pool->run_times = t;
    }
    int64_t *est = q->sent_behind ? &t->behind : &t->alone;
    if (took < 1)
        took = 1;       /* 0 means "no sample yet" */
    *est = *est ? *est + (took - *est) / 4 : took;
    if (q->sent_behind)
        t->behind_at = now;
}

/* Whether Q should go behind the queries on busy connection C though C does
 * not pack: the one way to learn Q's behind while its alone is over
 * the budget, or to see it fall again after it rose. At most once a second
 * per query name, only when behind is that old or missing, only behind
 * queries expected to end within Q's own alone (a probe costs at most
 * about one more of Q's run times, to one query a second), and never with
 * packing off. */
static bool probe_due(const struct pgpool *pool, const struct sql_query *q,
                      const struct pg_conn *c)
{
    if (!q->name || pool->d->cfg.pg_pipeline_pack_us <= 0)
        return false;
    const struct run_time *t = run_time(pool, q);
    int64_t now = mono_us();
    return t && t->alone && c->expected_us <= t->alone &&
           now - t->behind_at >= PROBE_EVERY_US && now - t->probed_at >= PROBE_EVERY_US;
}

/* A query that may change the session (raw SQL, or a named query whose text
 * says so: sql_session.h) can leave what the next jobs' queries on this
 * connection would inherit: a transaction left open (their writes would
 * never commit), SET, SET ROLE, LISTEN, a prepared statement or a cursor.
 * Such a query runs alone, so that the transaction status read here is its
 * own, and its connection is then closed instead of reused. */
static bool runs_alone(const struct sql_query *q)
{
    return q->session & SQL_SESSION_STATE;
}

static bool left_session_changed(const struct pg_conn *c, const struct sql_query *q)
{
    static const char *const changers[] = {"SET", "RESET", "BEGIN", "START TRANSACTION",
                                           "SAVEPOINT", "LISTEN", "PREPARE", "DEALLOCATE",
                                           "DECLARE CURSOR", "DISCARD", "LOAD", NULL};
    if (PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        return true;
    for (int i = 0; changers[i]; i++) {
        size_t n = strlen(changers[i]);     /* "DISCARD ALL", "SET" ... */
        if (!strncmp(q->command, changers[i], n) && (!q->command[n] || q->command[n] == ' '))
            return true;
    }
    return false;
}

/* Q's answer is complete: off C's pipeline, and either sent again (hit by a
 * cancel meant for the query before it) or set aside for done(). */
static void query_answered(struct pg_conn *c, struct sql_query *q, struct answered *out)
{
    struct pgpool *pool = c->pool;
    if (runs_alone(q))
        c->alone_inflight = false;
    if (q->left_state || (runs_alone(q) && left_session_changed(c, q))) {
        c->retire = true;
        log_info("postgres: %s%s (%s) changed the session: closing that connection",
                 q->name ? "query " : "raw SQL", q->name ? q->name : "",
                 q->command[0] ? q->command : "failed");
    }
    c->head = q->next;
    if (!c->head)
        c->tail = NULL;
    c->inflight--;
    c->expected_us -= q->expected_us;
    measure(pool, c, q);
    if (!c->inflight)
        c->idle_since = mono_ms();
    if (c->cancel_for == q)
        c->cancel_for = NULL;   /* Q's memory may serve another query next */
    if (c->stopping == q)
        c->stopping = NULL;
    q->next = NULL;
    /* Stopped by a cancel meant for another query (one sent before it, or
     * delivered late from a busy pool: the server cancels whatever runs when
     * it arrives), or its statement was not there (lost_statement()): run it
     * again, once. */
    bool hit_by_cancel = !strcmp(q->err.sqlstate, "57014") &&
                         (c->cancels_delivered > q->cancels_seen || c->cancels_pending);
    bool no_statement = q->name && !strcmp(q->err.sqlstate, "26000");
    if (q->err.code && (hit_by_cancel || no_statement) && !q->cancelled && !q->too_large &&
        !q->requeued) {
        log_info(hit_by_cancel ? "postgres: query %s was stopped by a cancel meant for the "
                                 "query before it; sending it again"
                               : "postgres: query %s found its prepared statement gone (its "
                                 "Prepare failed, or the session dropped it); sending it again, "
                                 "unprepared",
                 q->name ? q->name : "(raw SQL)");
        q->requeued = true;
        /* Not counting on a Prepare of its name again: one sent meanwhile
         * by a query ahead of it on the connection may fail as the first
         * did (the table still missing), and its 26000 came back. As an
         * unnamed statement (parsed with its Execute) it runs, or fails with
         * its own error. */
        q->unprepared = no_statement;
        reset_answer(q);
        q->next = pool->wait_head;      /* first in line: it was already sent once */
        pool->wait_head = q;
        if (!pool->wait_tail)
            pool->wait_tail = q;
        pool->nwaiting++;
    } else {
        /* The cancel that stopped an oversized result surfaces as an SQL error. */
        if (q->too_large && (!q->err.code || !strcmp(q->err.code, ERR_SQL_ERROR)))
            job_error_set(&q->err, ERR_TOO_LARGE, "result larger than %d rows or %d bytes",
                          SQL_MAX_ROWS, SQL_MAX_BYTES);
        if (q->cancelled && !q->err.code && !q->executed)
            job_error_set(&q->err, ERR_CANCELLED, "query cancelled");
        if (q->cancelled && q->again && !q->err.code && q->job_id)
            keep_answer(pool, q);
        append(&out->head, &out->tail, q);
    }
    /* The next query now runs: a cancel asked while it waited goes now. */
    if (c->head && c->head->cancelled)
        send_cancel(c, c->head);
}

/* Whether this pool reads results of STATUS. COPY is not among them: after
 * PGRES_COPY_OUT or _IN, PQgetResult returns the same status again until
 * the copy is ended with PQgetCopyData or PQputCopyEnd, never NULL, and a
 * loop waiting for NULL spun at 100% CPU with the daemon frozen. */
static bool status_known(ExecStatusType status)
{
    switch (status) {
    case PGRES_EMPTY_QUERY: case PGRES_COMMAND_OK: case PGRES_TUPLES_OK:
    case PGRES_SINGLE_TUPLE: case PGRES_PIPELINE_SYNC: case PGRES_PIPELINE_ABORTED:
    case PGRES_BAD_RESPONSE: case PGRES_NONFATAL_ERROR: case PGRES_FATAL_ERROR:
        return true;
    default:                /* COPY_OUT, COPY_IN, COPY_BOTH, any newer one */
        return false;
    }
}

/* Q's statement answered with STATUS, which this pool does not read on:
 * its job fails, not to be retried (it would do the same again). */
static void refuse_status(struct sql_query *q, ExecStatusType status)
{
    if (status == PGRES_COPY_OUT || status == PGRES_COPY_IN || status == PGRES_COPY_BOTH)
        job_error_set(&q->err, ERR_INVALID_JOB,
                      "sql: COPY is not supported (%s): jobd does not stream COPY data; "
                      "use SELECT, or INSERT with parameters", PQresStatus(status));
    else
        job_error_set(&q->err, ERR_INTERNAL, "sql: unexpected result status %s from PostgreSQL",
                      PQresStatus(status));
}

/* Read every answer libpq has complete on C. Returns -1 when C cannot go
 * on (a COPY started): its head query's error is set, and the caller closes
 * C with conn_close_failing(). */
static int read_results(struct pg_conn *c, struct answered *out)
{
    while (c->head) {
        struct sql_query *q = c->head;
        enum step step = q->steps[q->step];
        /* Before PQisBusy, which parses what has arrived: libpq takes single-
         * row mode only while the execute step is its current command and
         * none of its rows were parsed yet (asked after PQisBusy said the
         * result was complete, it was always refused, and a huge result was
         * held whole before a row was counted). Refused, the rows come whole
         * and take_result takes them all. */
        if (step == STEP_EXECUTE && !q->row_mode)
            q->row_mode = PQsetSingleRowMode(c->pg) == 1;
        if (PQisBusy(c->pg))
            break;
        PGresult *res = PQgetResult(c->pg);
        if (!res) {
            if (step == STEP_SYNC)
                break;          /* no NULL precedes a sync: nothing more yet */
            q->step++;          /* the end of one step's results */
            continue;
        }
        if (!status_known(PQresultStatus(res))) {
            refuse_status(q, PQresultStatus(res));
            PQclear(res);
            return -1;
        }
        if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            if (++q->step >= q->nsteps)
                query_answered(c, q, out);
            continue;
        }
        take_result(c, q, step, res);
        PQclear(res);
    }
    return 0;
}

/* ---- sending --------------------------------------------------------------- */

/* SET statement_timeout, queued: an integer we computed, no injection
 * possible. libpq's PQsend* result (1 sent). */
static int send_timeout(PGconn *pg, int64_t ms)
{
    char sql[96];
    snprintf(sql, sizeof(sql), "SET statement_timeout = %lld", (long long)ms);
    return PQsendQueryParams(pg, sql, 0, NULL, NULL, NULL, NULL, 0);
}

/* What a query that may change the session (sql_session.h) leaves is undone
 * in the same packet, with a Sync of its own (the job's answer stands
 * whatever happens to this), before anything pipelined behind it: a session
 * advisory lock must not outlive its job (another daemon's job waiting for
 * it would wait for ever). One that runs alone also has its settings reset
 * (set_config(), in its text or in a function it calls) and its LISTENs
 * ended, and shows whether it made temporary tables or changed role: its
 * connection is then closed (query_answered()), as it is for what
 * left_session_changed() sees. All cheap, no round trip of their own, and
 * only for such queries (measured on a local server, one at a time: SELECT
 * 1 64-114 us, RESET ALL 37-52 us; a scan of pg_settings for settings
 * changed was 960 us, so settings are reset rather than looked for). */
static int send_reset(struct pg_conn *c, struct sql_query *q)
{
    static const char *const lock[] = {"SELECT pg_advisory_unlock_all()", NULL};
    static const char *const alone[] = {
        "SELECT pg_advisory_unlock_all(), pg_my_temp_schema() <> 0 OR current_user <> "
        "session_user AS changed", "RESET ALL", "UNLISTEN *", NULL};
    const char *const *reset = runs_alone(q) ? alone : lock;
    for (int i = 0; reset[i]; i++) {
        if (!PQsendQueryParams(c->pg, reset[i], 0, NULL, NULL, NULL, NULL, 0))
            return -1;
        q->steps[q->nsteps++] = STEP_RESET;
    }
    if (runs_alone(q) && c->statement_timeout >= 0) {
        /* RESET ALL undid it: set again here, not in a segment of its own
         * before the next query. */
        if (!send_timeout(c->pg, c->statement_timeout))
            return -1;
        q->steps[q->nsteps++] = STEP_RESET;
    }
    if (!PQpipelineSync(c->pg))
        return -1;
    q->steps[q->nsteps++] = STEP_SYNC;
    return 0;
}

/* Queue every step of Q on C's pipeline; -1 when libpq refused one (the
 * connection is then unusable). */
static int send_query(struct pg_conn *c, struct sql_query *q)
{
    PGconn *pg = c->pg;
    char stmt[64];
    q->nsteps = q->step = 0;
    q->row_mode = q->executed = false;
    q->cancels_seen = c->cancels_delivered;
    if (c->statement_timeout != q->timeout_ms) {
        /* A sync of its own, so the query's failure does not roll the
         * setting back. */
        if (!send_timeout(pg, q->timeout_ms) || !PQpipelineSync(pg))
            return -1;
        q->steps[q->nsteps++] = STEP_SET_TIMEOUT;
        q->steps[q->nsteps++] = STEP_SYNC;
        c->statement_timeout = q->timeout_ms;
    }
    bool named = q->name && !q->unprepared;
    if (named)
        statement_name(q, stmt, sizeof(stmt));
    if (named && !json_object_get(c->prepared, stmt)) {
        if (!PQsendPrepare(pg, stmt, q->sql, q->nparams, NULL))
            return -1;
        q->steps[q->nsteps++] = STEP_PREPARE;
        /* Marked now: the queries pipelined after this one must not send a
         * second Prepare of the same name. */
        json_object_set_new(c->prepared, stmt, json_true());
    }
    int ok = named ? PQsendQueryPrepared(pg, stmt, q->nparams, q->params, NULL, NULL, 0)
                   : PQsendQueryParams(pg, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
    if (!ok || !PQpipelineSync(pg))
        return -1;
    q->steps[q->nsteps++] = STEP_EXECUTE;
    q->steps[q->nsteps++] = STEP_SYNC;
    q->left_state = false;
    if (q->session && send_reset(c, q))
        return -1;
    return 0;
}

/* After a read or a send: wait for the answers, and for room to write what
 * libpq could not send yet. Returns -1 when the connection broke. */
static int rearm(struct pg_conn *c)
{
    int pending = PQflush(c->pg);
    if (pending < 0 || PQstatus(c->pg) == CONNECTION_BAD)
        return -1;
    watch(c, (short)(EV_READ | (pending == 1 ? EV_WRITE : 0)));
    return 0;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    struct pgpool *pool = c->pool;
    if (c->state == C_CONNECTING) {
        connect_step(c, PQconnectPoll(c->pg));
        return;
    }
    struct answered done = {NULL, NULL};
    /* Idle and readable too: the server closed it, or sent a notice. */
    if ((what & EV_READ) && !PQconsumeInput(c->pg)) {
        conn_broken(c);
    } else if (read_results(c, &done)) {
        /* The server now waits for COPY data or sends it: the connection
         * cannot carry the queries behind, which did nothing wrong. */
        log_info("postgres: closing a connection: %s", c->head->err.message);
        conn_close_failing(c, "connection closed by jobd: the query before it on the "
                           "connection got a result jobd does not read (COPY)", c->head);
    } else if (rearm(c)) {
        conn_broken(c);
    } else if (c->retire && !c->inflight) {
        conn_close(c);
    }
    answered_complete(pool, &done);
    dispatch(pool);
}

/* ---- the pool -------------------------------------------------------------- */

/* A busy connection with room in its pipeline whose queries are expected to
 * end within postgres.pipeline_pack_us takes the next one: waking one backend
 * for several quick queries costs the machine far less than waking one each
 * (sql jobs at 17,800/s on 2 cores, 20 connections, pipeline 16: PostgreSQL
 * 40-45 -> 27-30 us of CPU a query). */
static bool packs(const struct pgpool *pool, const struct pg_conn *c)
{
    return c->state == C_READY && c->inflight && c->inflight < pool->d->cfg.pg_pipeline &&
           c->expected_us <= pool->d->cfg.pg_pipeline_pack_us;
}

/* Where query Q goes: packed on a busy connection (above), else the one with
 * room in its pipeline (postgres.pipeline queries at most) whose queries are
 * expected to end first: an idle one if any, unless a probe is due (then
 * the least busy one; the probe is recorded here, as dispatch() sends Q
 * wherever this says). A query that may change the session (raw SQL among
 * them) runs alone on an idle connection (left_session_changed() looks at
 * what it leaves behind). */
static struct pg_conn *pick_conn(struct pgpool *pool, const struct sql_query *q)
{
    struct pg_conn *best = NULL, *least_busy = NULL;
    for (struct pg_conn *c = pool->conns; c; c = c->next) {
        if (c->retire || c->alone_inflight)
            continue;
        if (runs_alone(q)) {
            if (c->state == C_READY && !c->inflight)
                return c;
            continue;
        }
        if (packs(pool, c))
            return c;
        if (c->state != C_READY || c->inflight >= pool->d->cfg.pg_pipeline)
            continue;
        if (c->inflight && (!least_busy || c->expected_us < least_busy->expected_us))
            least_busy = c;
        if (!best || c->expected_us < best->expected_us ||
            (c->expected_us == best->expected_us && c->inflight < best->inflight))
            best = c;
    }
    if (best && !best->inflight && least_busy && probe_due(pool, q, least_busy)) {
        run_time(pool, q)->probed_at = mono_us();
        pool->probes++;
        return least_busy;
    }
    return best;
}

/* libpq flushes at every sync, and each packet wakes the backend, which on
 * a small machine preempts the loop: a connection given several queries in
 * one round is corked after the first, so the rest leave as one packet. A
 * Unix socket refuses TCP_CORK, harmlessly. */
static void cork(struct pg_conn *c, int on)
{
    setsockopt(PQsocket(c->pg), IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
    c->corked = on;
}

static void dispatch(struct pgpool *pool)
{
    struct pg_conn *c;
    unpark(pool);
    while (pool->wait_head && (c = pick_conn(pool, pool->wait_head))) {
        struct sql_query *q = pool->wait_head;
        q->sent_behind = c->inflight > 0;
        c->alone_inflight = runs_alone(q);
        pool->wait_head = q->next;
        if (!pool->wait_head)
            pool->wait_tail = NULL;
        pool->nwaiting--;
        q->conn = c;
        append(&c->head, &c->tail, q);
        c->inflight++;
        q->expected_us = expected_run_us(pool, q);
        c->expected_us += q->expected_us;
        pool->queries++;
        if (c->round_sends++ == 1)
            cork(c, 1);
        q->sent_us = mono_us();
        if (send_query(c, q) || rearm(c))
            conn_broken(c);     /* fails Q and whatever else C carried */
    }
    /* Open connections for the queries still waiting, and while pipelines
     * are filling (a query that waits behind another longer than the packing
     * budget is demand, too). */
    int connecting = 0, queued_behind = 0;
    for (c = pool->conns; c; c = c->next) {
        if (c->corked)
            cork(c, 0);         /* sends what was held back */
        c->round_sends = 0;
        connecting += c->state == C_CONNECTING;
        if (c->inflight > 1 && c->expected_us > pool->d->cfg.pg_pipeline_pack_us)
            queued_behind += c->inflight - 1;
    }
    while (pool->nwaiting + queued_behind > connecting &&
           pool->nconns < pool->d->cfg.pg_max_size && mono_ms() >= pool->next_connect) {
        int before = pool->nconns;
        conn_open(pool);
        if (pool->nconns <= before)
            break;      /* failed at once */
        connecting++;
    }
    /* Nothing can serve them and nothing is being opened: the server is
     * down and we are backing off. Say so now rather than waiting out jobs. */
    if (pool->nwaiting && pool->nconns == 0 && pool->failures)
        fail_waiting(pool, "connection attempts are failing");
}

static void kick(evutil_socket_t fd, short what, void *arg)
{
    dispatch(arg);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct pgpool *pool = arg;
    int64_t now = mono_ms();
    struct pg_conn *c = pool->conns;
    int idle = 0;
    while (c) {
        struct pg_conn *next = c->next;
        if (c->state == C_CONNECTING && now - c->started > CONNECT_TIMEOUT_MS)
            connect_failed(c, "connect timed out");
        else if (c->state == C_READY && !c->inflight && ++idle &&
                 pool->nconns > pool->d->cfg.pg_min_size &&
                 now - c->idle_since > pool->d->cfg.pg_idle_timeout_ms)
            conn_close(c);
        else if (c->state == C_READY && c->stopping && c->stopping == c->head &&
                 now - c->stopping_since > STOP_GIVE_UP_MS)
            /* Cancelled and still not back: the server or the network in
             * between stopped answering. Its attempt must end (a timeout
             * would otherwise hold its slot until the server came back), and
             * the queries behind it fail as unavailable (retried). */
            conn_lost(c, "a cancelled query did not come back: the server stopped answering");
        else
            cancel_again(c, now);
        c = next;
    }
    if (pool->nconns < pool->d->cfg.pg_min_size && now >= pool->next_connect)
        conn_open(pool);
    log_limit_flush(&pool->notices);   /* a burst's count, said without waiting for more */
    stand_ins_expire(pool, now);
    dispatch(pool);
}

struct pgpool *pgpool_create(struct daemon *d)
{
    if (!d->cfg.pg_conninfo || !*d->cfg.pg_conninfo)
        return NULL;
    struct pgpool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return NULL;
    pool->d = d;
    pool->notices = (struct log_limit)LOG_LIMIT("postgres: server notice(s)", NOTICES_PER_SECOND);
    pool->tick = timer_new_periodic(d->base, TICK_MS, tick, pool);
    pool->kick = event_new(d->base, -1, 0, kick, pool);
    pool->cancels = threadpool_create(d->base, CANCEL_THREADS, INT_MAX);
    for (int i = 0; i < d->cfg.pg_min_size; i++)
        conn_open(pool);
    return pool;
}

/* A cancel pool left running at exit (see pgpool_free): kept reachable, for
 * the leak checker, since its blocked thread still uses it. */
static struct threadpool *abandoned_cancels;

void pgpool_free(struct pgpool *pool)
{
    if (!pool)
        return;
    /* First: their done() looks at the connections. A PQcancel still
     * blocked on a server that does not answer is not waited for. */
    if (threadpool_destroy_if_idle(pool->cancels)) {
        abandoned_cancels = pool->cancels;
        log_warn("postgres: a cancel request is still waiting for the server; not waiting");
    }
    /* Stand-ins: those on connections not kept, then those kept (some of
     * them still on connections: the walk must not meet them freed). */
    for (struct pg_conn *c = pool->conns; c; c = c->next)
        for (struct sql_query *q = c->head, *next; q; q = next) {
            next = q->next;
            if (q->done == stand_in_done && !stand_in_kept(pool, q->arg))
                stand_in_free(q->arg);
        }
    for (int i = 0; i < STAND_IN_BUCKETS; i++)
        while (pool->stand_ins[i]) {
            struct stand_in *s = pool->stand_ins[i];
            pool->stand_ins[i] = s->next;
            stand_in_free(s);   /* answered or not: no connection will answer now */
        }
    while (pool->conns)
        conn_close(pool->conns);
    event_free(pool->tick);
    event_free(pool->kick);
    while (pool->run_times) {
        struct run_time *t = pool->run_times;
        pool->run_times = t->next;
        free(t->name);
        free(t);
    }
    free(pool);
}

void pgpool_submit(struct pgpool *pool, struct sql_query *q)
{
    q->rows = NULL;             /* the caller's to free: exec_sql has */
    reset_answer(q);
    q->cancelled = q->requeued = q->again = q->unprepared = false;
    if (stand_in_find(pool, q)) {
        /* Its last attempt's statement may still run: see stand_in(). If
         * its answer is in already, unpark() hands it over (not before this
         * returns). */
        q->parked = true;
        append(&pool->parked_head, &pool->parked_tail, q);
        pool->unpark_due = true;
    } else {
        append(&pool->wait_head, &pool->wait_tail, q);
        pool->nwaiting++;
    }
    /* Queries submitted in one loop pass (a batch of jobs read together) go
     * out in one round, so each connection's share leaves in one packet. */
    event_active(pool->kick, EV_TIMEOUT, 0);     /* no-op when already active */
}

void pgpool_cancel(struct pgpool *pool, struct sql_query *q, bool again)
{
    q->cancelled = true;
    q->again = again;
    if (q->conn) {
        /* Sent: stopped on the server when it is the query running there
         * (done() follows its answer); one queued behind another ends now,
         * a stand-in in its place (or, out of memory, when its turn comes). */
        if (q->conn->head == q) {
            send_cancel(q->conn, q);
        } else if (stand_in(pool, q, again)) {
            job_error_set(&q->err, ERR_CANCELLED,
                          "query cancelled while queued behind another on its connection");
            query_complete(pool, q);
        }
        return;
    }
    /* Not sent: it leaves the wait queue, or stops waiting for its stand-in
     * (which stays, for a later attempt). */
    if (take_out(&pool->parked_head, &pool->parked_tail, q)) {
        q->parked = false;
    } else if (take_out(&pool->wait_head, &pool->wait_tail, q)) {
        pool->nwaiting--;
    } else {
        return;
    }
    job_error_set(&q->err, ERR_CANCELLED, "query cancelled before it started");
    query_complete(pool, q);
}

void pgpool_counts(const struct pgpool *pool, struct pgpool_counts *out)
{
    memset(out, 0, sizeof(*out));
    if (!pool)
        return;
    for (const struct pg_conn *c = pool->conns; c; c = c->next) {
        out->open++;
        out->busy += c->inflight > 0;
        out->idle += c->state == C_READY && !c->inflight;
        out->connecting += c->state == C_CONNECTING;
        out->inflight += c->inflight;
    }
    out->open -= out->connecting;
    out->waiting = pool->nwaiting;
    out->queries = pool->queries;
    out->errors = pool->errors;
    out->reconnects = pool->reconnects;
    out->probes = pool->probes;
}

void pgpool_each_run_time(const struct pgpool *pool, pgpool_run_time_fn *fn, void *arg)
{
    if (!pool)
        return;
    for (const struct run_time *t = pool->run_times; t; t = t->next) {
        /* A name a reload removed keeps its entry (a job may still run
         * it) but is no longer the operator's to see. */
        if (*t->name && !config_query(&pool->d->cfg, t->name))
            continue;
        fn(arg, t->name, t->alone, t->behind);
    }
}
