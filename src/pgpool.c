/* pgpool.c - non-blocking libpq connections on the loop (see pgpool.h).
 *
 * Rules from libpq 15 that shape this file: connect with
 * PQconnectStartParams and drive PQconnectPoll, re-reading PQsocket() at every
 * step, under our own deadline (connect_timeout is ignored in this mode); then
 * PQsetnonblocking, PQsend*, PQflush until 0, PQconsumeInput on readable and
 * PQgetResult while !PQisBusy. Never PQexec. PQcancel blocks, so it runs on a
 * pool thread. Results are read one row at a time (single-row mode) so a cap
 * on rows and bytes holds while the result streams in.
 */
#include <event2/event.h>
#include <event2/event_struct.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "log.h"
#include "pgpool.h"
#include "threadpool.h"
#include "timer.h"

#define CONNECT_TIMEOUT_MS 5000
#define TICK_MS 250
#define BACKOFF_MAX_MS 5000

enum conn_state { C_CONNECTING, C_IDLE, C_BUSY };
enum phase { PHASE_TIMEOUT = 1, PHASE_PREPARE, PHASE_EXECUTE };

struct pg_conn {
    struct pgpool *pool;
    PGconn *pg;
    enum conn_state state;
    struct event ev;            /* one persistent event, re-armed only when */
    short ev_what;              /* the interest or the socket changes */
    int ev_fd;
    int64_t started, idle_since;
    int64_t statement_timeout;  /* as set on the server; -1 unknown */
    json_t *prepared;           /* statement names prepared here */
    struct sql_query *q;
    bool cancel_sent;
    struct pg_conn *next;
};

struct pgpool {
    struct daemon *d;
    struct pg_conn *conns;
    int nconns;
    struct sql_query *wait_head, *wait_tail;
    int nwaiting;
    struct event *tick;
    int64_t next_connect;       /* mono ms: backoff after a failed connect */
    int failures;
    uint64_t queries, errors, reconnects;
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

/* Hand Q back to its owner: rows only on success, the scratch state freed. */
static void query_complete(struct pgpool *pool, struct sql_query *q)
{
    q->conn = NULL;
    if (q->err.code) {
        pool->errors++;
        json_decref(q->rows);
        q->rows = NULL;
    } else if (!q->rows) {
        q->rows = json_array();
    }
    json_decref(q->fields);
    q->fields = NULL;
    free(q->types);
    q->types = NULL;
    q->done(q);
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
        if (PQsetnonblocking(c->pg, 1)) {
            connect_failed(c, "cannot make the connection non-blocking");
            return;
        }
        if (c->pool->failures)
            log_notice("postgres: connected again");
        c->pool->failures = 0;
        c->state = C_IDLE;
        c->idle_since = mono_ms();
        watch(c, EV_READ);      /* idle: notice at once when the server closes it */
        dispatch(c->pool);
        break;
    default: connect_failed(c, PQerrorMessage(c->pg)); break;
    }
}

static void conn_open(struct pgpool *pool)
{
    const char *keys[] = {"dbname", "application_name", "client_encoding", NULL};
    const char *vals[] = {pool->d->cfg.pg_conninfo, "jobd", "UTF8", NULL};
    struct pg_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->pool = pool;
    c->statement_timeout = -1;
    c->prepared = json_object();
    c->pg = PQconnectStartParams(keys, vals, 1);
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

/* ---- queries --------------------------------------------------------------- */

static void finish(struct pg_conn *c)
{
    struct sql_query *q = c->q;
    c->q = NULL;
    c->cancel_sent = false;
    c->state = C_IDLE;
    c->idle_since = mono_ms();
    watch(c, EV_READ);
    /* The cancel that stopped an oversized result surfaces as an SQL error. */
    if (q->too_large && (!q->err.code || !strcmp(q->err.code, ERR_SQL_ERROR)))
        job_error_set(&q->err, ERR_TOO_LARGE, "result larger than %d rows or %d bytes",
                      SQL_MAX_ROWS, SQL_MAX_BYTES);
    query_complete(c->pool, q);
    dispatch(c->pool);
}

/* The connection died under a query: the query is unavailable (transient). */
static void conn_broken(struct pg_conn *c)
{
    char msg[256];
    first_line(msg, sizeof(msg), PQerrorMessage(c->pg));
    log_warn("postgres: connection lost: %s", msg);
    struct sql_query *q = c->q;
    c->q = NULL;
    struct pgpool *pool = c->pool;
    conn_close(c);
    if (q) {
        job_error_set(&q->err, ERR_UNAVAILABLE, "connection to PostgreSQL lost: %s", msg);
        query_complete(pool, q);
    }
    dispatch(pool);
}

struct cancel_task {
    struct pool_task task;
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
    PQfreeCancel(ct->cancel);
    free(ct);
}

/* PQcancel blocks (a new connection to the server): a pool thread sends it
 * while the loop goes on reading this connection. */
static void send_cancel(struct pg_conn *c)
{
    if (c->cancel_sent)
        return;
    struct cancel_task *ct = calloc(1, sizeof(*ct));
    if (!ct || !(ct->cancel = PQgetCancel(c->pg))) {
        free(ct);
        return;
    }
    ct->task.work = cancel_work;
    ct->task.done = cancel_done;
    if (threadpool_submit(c->pool->d->pool, &ct->task)) {
        PQfreeCancel(ct->cancel);
        free(ct);
        return;     /* statement_timeout is the second guard */
    }
    c->cancel_sent = true;
}

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
        json_t *doc = json_loadb(v, (size_t)len, JSON_DECODE_ANY, NULL);
        if (doc)
            return doc;
        break;
    }
    }
    json_t *text = json_stringn(v, (size_t)len);
    return text ? text : json_string("");
}

static void take_row(struct sql_query *q, const PGresult *res)
{
    int ncols = PQnfields(res);
    if (!q->fields) {
        q->fields = json_array();
        q->types = calloc((size_t)ncols + 1, sizeof(Oid));
        for (int i = 0; i < ncols; i++) {
            json_array_append_new(q->fields, json_string(PQfname(res, i)));
            q->types[i] = PQftype(res, i);
        }
        if (!q->rows)
            q->rows = json_array();
    }
    if (q->too_large)
        return;
    json_t *row = json_object();
    for (int i = 0; i < ncols; i++) {
        q->bytes += (size_t)PQgetlength(res, 0, i) + 8;
        json_object_set_new(row, json_string_value(json_array_get(q->fields, (size_t)i)),
                            value_of(res, 0, i, q->types[i]));
    }
    json_array_append_new(q->rows, row);
    if (json_array_size(q->rows) > SQL_MAX_ROWS || q->bytes > SQL_MAX_BYTES) {
        /* Stop the query on the server instead of reading it to the end. */
        q->too_large = true;
        json_decref(q->rows);
        q->rows = json_array();
        send_cancel(q->conn);
    }
}

static void take_result(struct sql_query *q, PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_SINGLE_TUPLE: take_row(q, res); break;
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
        if (q->phase == PHASE_EXECUTE) {
            snprintf(q->command, sizeof(q->command), "%s", PQcmdStatus(res));
            const char *n = PQcmdTuples(res);
            q->row_count = *n ? atoll(n) : (q->rows ? (long long)json_array_size(q->rows) : 0);
            if (!strncmp(q->command, "SELECT", 6) && q->rows)
                q->row_count = (long long)json_array_size(q->rows);
        }
        break;
    case PGRES_EMPTY_QUERY: q->command[0] = '\0'; break;
    default:
        if (!q->err.code) {
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            job_error_set(&q->err, ERR_SQL_ERROR, "%s", msg ? msg : PQresultErrorMessage(res));
            snprintf(q->err.sqlstate, sizeof(q->err.sqlstate), "%s", state ? state : "");
        }
        break;
    }
}

static void flush(struct pg_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0)
        conn_broken(c);
    else
        watch(c, (short)(EV_READ | (rc == 1 ? EV_WRITE : 0)));
}

static void statement_name(const struct sql_query *q, char *buf, size_t len)
{
    snprintf(buf, len, "q_%s", q->name);
}

/* Send the next step of Q; returns -1 when libpq refused it. */
static int send_phase(struct pg_conn *c, struct sql_query *q)
{
    char stmt[160];
    if (q->phase == PHASE_TIMEOUT) {
        char sql[96];
        /* An integer we computed: no injection possible. */
        snprintf(sql, sizeof(sql), "SET statement_timeout = %lld", (long long)q->timeout_ms);
        return PQsendQuery(c->pg, sql) ? 0 : -1;
    }
    if (q->phase == PHASE_PREPARE) {
        statement_name(q, stmt, sizeof(stmt));
        return PQsendPrepare(c->pg, stmt, q->sql, q->nparams, NULL) ? 0 : -1;
    }
    int ok;
    if (q->name) {
        statement_name(q, stmt, sizeof(stmt));
        ok = PQsendQueryPrepared(c->pg, stmt, q->nparams, q->params, NULL, NULL, 0);
    } else {
        ok = PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
    }
    if (ok)
        PQsetSingleRowMode(c->pg);
    return ok ? 0 : -1;
}

static bool is_prepared(const struct pg_conn *c, const struct sql_query *q)
{
    return q->name && json_object_get(c->prepared, q->name);
}

/* Move Q to its next phase, or finish it. */
static void advance(struct pg_conn *c)
{
    struct sql_query *q = c->q;
    if (q->err.code || q->too_large || (q->cancelled && q->phase != PHASE_EXECUTE && q->phase)) {
        if (!q->err.code && q->cancelled)
            job_error_set(&q->err, ERR_CANCELLED, "query cancelled");
        finish(c);
        return;
    }
    switch (q->phase) {
    case 0:
        q->phase = c->statement_timeout != q->timeout_ms ? PHASE_TIMEOUT
                   : q->name && !is_prepared(c, q)       ? PHASE_PREPARE
                                                         : PHASE_EXECUTE;
        break;
    case PHASE_TIMEOUT:
        c->statement_timeout = q->timeout_ms;
        q->phase = q->name && !is_prepared(c, q) ? PHASE_PREPARE : PHASE_EXECUTE;
        break;
    case PHASE_PREPARE:
        json_object_set_new(c->prepared, q->name, json_true());
        q->phase = PHASE_EXECUTE;
        break;
    case PHASE_EXECUTE: finish(c); return;
    }
    if (send_phase(c, q)) {
        conn_broken(c);
        return;
    }
    flush(c);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    if (c->state == C_CONNECTING) {
        connect_step(c, PQconnectPoll(c->pg));
        return;
    }
    if (c->state != C_BUSY) {
        /* Idle and readable: the server closed it, or sent a notice. */
        if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD)
            conn_broken(c);
        else
            watch(c, EV_READ);
        return;
    }
    if ((what & EV_READ) && !PQconsumeInput(c->pg)) {
        conn_broken(c);
        return;
    }
    int pending = PQflush(c->pg);
    if (pending < 0) {
        conn_broken(c);
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *res = PQgetResult(c->pg);
        if (!res) {
            advance(c);     /* finishes the phase; may finish the query */
            return;
        }
        take_result(c->q, res);
        PQclear(res);
    }
    watch(c, (short)(EV_READ | (pending == 1 ? EV_WRITE : 0)));
}

/* ---- the pool -------------------------------------------------------------- */

static void dispatch(struct pgpool *pool)
{
    while (pool->wait_head) {
        struct pg_conn *c = pool->conns;
        while (c && c->state != C_IDLE)
            c = c->next;
        if (!c)
            break;
        struct sql_query *q = pool->wait_head;
        pool->wait_head = q->next;
        if (!pool->wait_head)
            pool->wait_tail = NULL;
        pool->nwaiting--;
        q->next = NULL;
        q->conn = c;
        q->phase = 0;
        c->q = q;
        c->state = C_BUSY;
        pool->queries++;
        advance(c);     /* may finish the query, and re-enter dispatch() */
    }
    int connecting = 0;
    for (struct pg_conn *c = pool->conns; c; c = c->next)
        connecting += c->state == C_CONNECTING;
    while (pool->nwaiting > connecting && pool->nconns < pool->d->cfg.pg_max_size &&
           mono_ms() >= pool->next_connect) {
        int before = pool->nconns;
        conn_open(pool);
        if (pool->nconns <= before)
            break;      /* failed at once */
        connecting++;
    }
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
        else if (c->state == C_IDLE && ++idle && pool->nconns > pool->d->cfg.pg_min_size &&
                 now - c->idle_since > pool->d->cfg.pg_idle_timeout_ms)
            conn_close(c);
        c = next;
    }
    if (pool->nconns < pool->d->cfg.pg_min_size && now >= pool->next_connect)
        conn_open(pool);
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
    pool->tick = timer_new_periodic(d->base, TICK_MS, tick, pool);
    for (int i = 0; i < d->cfg.pg_min_size; i++)
        conn_open(pool);
    return pool;
}

void pgpool_free(struct pgpool *pool)
{
    if (!pool)
        return;
    while (pool->conns)
        conn_close(pool->conns);
    event_free(pool->tick);
    free(pool);
}

void pgpool_submit(struct pgpool *pool, struct sql_query *q)
{
    q->next = NULL;
    q->conn = NULL;
    q->phase = 0;
    q->cancelled = q->too_large = false;
    q->bytes = 0;
    q->rows = NULL;
    q->row_count = 0;
    q->command[0] = '\0';
    memset(&q->err, 0, sizeof(q->err));
    if (pool->wait_tail)
        pool->wait_tail->next = q;
    else
        pool->wait_head = q;
    pool->wait_tail = q;
    pool->nwaiting++;
    dispatch(pool);
    /* Nothing can serve it and nothing is being opened: the server is down
     * and we are backing off. Say so now rather than waiting out the job. */
    if (q->conn == NULL && pool->nconns == 0 && pool->nwaiting && pool->failures)
        fail_waiting(pool, "connection attempts are failing");
}

void pgpool_cancel(struct pgpool *pool, struct sql_query *q)
{
    q->cancelled = true;
    if (q->conn) {
        send_cancel(q->conn);
        return;
    }
    /* Still waiting for a connection: leave the queue. */
    struct sql_query *prev = NULL;
    for (struct sql_query *t = pool->wait_head; t; prev = t, t = t->next) {
        if (t != q)
            continue;
        if (prev)
            prev->next = q->next;
        else
            pool->wait_head = q->next;
        if (pool->wait_tail == q)
            pool->wait_tail = prev;
        pool->nwaiting--;
        job_error_set(&q->err, ERR_CANCELLED, "query cancelled before it started");
        query_complete(pool, q);
        return;
    }
}

void pgpool_counts(const struct pgpool *pool, struct pgpool_counts *out)
{
    memset(out, 0, sizeof(*out));
    if (!pool)
        return;
    for (const struct pg_conn *c = pool->conns; c; c = c->next) {
        out->open++;
        out->busy += c->state == C_BUSY;
        out->idle += c->state == C_IDLE;
        out->connecting += c->state == C_CONNECTING;
    }
    out->open -= out->connecting;
    out->waiting = pool->nwaiting;
    out->queries = pool->queries;
    out->errors = pool->errors;
    out->reconnects = pool->reconnects;
}
