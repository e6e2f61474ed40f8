/* redis.c - connection keeping for the three hiredis contexts (see redis.h).
 *
 * Rules from hiredis 0.14.1 that shape this file:
 * - a context is freed by hiredis after its disconnect callback returns and
 *   must never be reused; a failed connect calls only the connect callback;
 * - no command may be issued from inside a context's own connect or
 *   disconnect callback, so both only record the fact and arm a timer;
 * - there are no timeouts, so a periodic check frees a context whose connect
 *   or oldest unanswered command took too long, with nothing heard since the
 *   check before (pending callbacks then get a NULL reply, which every
 *   callback here handles).
 */
#include <event2/event.h>
#include <hiredis/async.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "job.h"
#include "jsonw.h"
#include "list.h"
#include "log.h"
#include "redis.h"
#include "redis_loop.h"
#include "timer.h"

#define CONNECT_TIMEOUT_MS 5000
#define COMMAND_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CHECK_INTERVAL_MS 250
/* A connection counts as healthy, and its backoff starts over, only after
 * this long: one that the server accepts and then closes at once (maxclients,
 * protected mode, an ACL refusing SUBSCRIBE) must back off, not spin. */
#define HEALTHY_AFTER_MS 5000
/* Redis before 6.2 has no XPENDING ... IDLE (the reclaim of a dead worker's
 * jobs) nor ZADD GT (the shared cancels). jobd would seem to run on it and
 * lose those silently, so such a server is refused like a wrong password:
 * the jobs wait in Redis, and the log says why. */
#define REDIS_MIN_MAJOR 6
#define REDIS_MIN_MINOR 2

/* HANDSHAKE: connected, AUTH, SELECT and HELLO sent; no module may use it
 * before their replies, or its first commands would run unauthenticated, in
 * db 0, or on a server too old for them. */
enum conn_state { CONN_IDLE, CONN_CONNECTING, CONN_HANDSHAKE, CONN_READY };

struct conn {
    struct redis *r;
    enum redis_role role;
    redisAsyncContext *ac;
    enum conn_state state;
    uint64_t generation;        /* bumped on every new context */
    int failures;               /* connects since the last healthy spell */
    int64_t connect_started, ready_since;
    int outstanding;
    struct list calls;          /* struct call awaiting replies, oldest first */
    int handshake_left;         /* AUTH / SELECT / HELLO replies still to come */
    uint64_t reads_seen;        /* redis_loop_reads() at the last check */
    char server_version[32];    /* from HELLO, "" when the server did not say */
    char down_reason[160];      /* why it was lost, for the down hook (redis_down_reason()) */
    struct event *retry_timer;  /* reconnect after backoff */
    struct event *ready_event;  /* runs the ready work outside hiredis callbacks */
    struct redis_hooks hooks;
};

struct redis {
    struct daemon *d;
    struct conn conns[REDIS_NROLES];
    struct event *check_timer;
    uint64_t reconnects;
    bool stopping;
    bool version_unknown_said;  /* "could not learn the version", said once */
    struct jbuf resp;           /* redis_send_queued()'s buffer, reused */
};

/* One in-flight command: keeps the counters right even when the reply comes
 * back (as NULL) after the context it was sent on is gone. */
struct call {
    struct conn *c;
    uint64_t generation;
    int64_t deadline;
    redis_reply_fn *fn;
    void *priv;
    struct list_link link;      /* in c->calls while of the current generation */
};

static const char *const role_names[] = {"command", "subscriber", "stream"};

static void conn_connect(struct conn *c);

static void conn_schedule_retry(struct conn *c)
{
    if (c->r->stopping)
        return;
    int64_t delay = BACKOFF_MIN_MS << (c->failures < 10 ? c->failures : 10);
    if (delay > BACKOFF_MAX_MS)
        delay = BACKOFF_MAX_MS;
    delay = delay / 2 + (int64_t)(random() % (delay / 2 + 1));   /* jitter: [0.5, 1.0] */
    c->failures++;
    timer_add_ms(c->retry_timer, delay);
}

/* Forget the context (hiredis frees it) and plan a reconnect. */
static void conn_lost(struct conn *c)
{
    bool was_ready = c->state == CONN_READY;
    c->ac = NULL;
    c->state = CONN_IDLE;
    c->outstanding = 0;
    c->calls = (struct list){0};        /* hiredis frees them with NULL replies */
    c->generation++;
    if (was_ready && c->hooks.down)
        c->hooks.down(c->hooks.arg);
    c->down_reason[0] = '\0';
    conn_schedule_retry(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct conn *c = ac->data;
    if (!c || c->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* Say it once per outage, not on every backoff round. */
        log_msg(c->failures ? LOG_DEBUG : LOG_WARN, "redis %s connection: connect failed: %s%s",
                role_names[c->role], ac->errstr, c->failures ? "" : "; retrying with backoff");
        conn_lost(c);
        return;
    }
    /* Commands may not be sent from here: finish on the next loop turn. */
    event_active(c->ready_event, 0, 0);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct conn *c = ac->data;
    if (!c || c->ac != ac)
        return;     /* a context we dropped ourselves */
    log_warn("redis %s connection lost: %s", role_names[c->role],
             status == REDIS_OK ? "closed" : ac->errstr);
    snprintf(c->down_reason, sizeof(c->down_reason), "%s", status == REDIS_OK ? "" : ac->errstr);
    conn_lost(c);
}

static void drop_context(struct conn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    log_warn("redis %s connection: %s; reconnecting", role_names[c->role], why);
    conn_lost(c);
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);     /* pending callbacks run now with NULL replies */
    }
}

static void became_ready(struct conn *c)
{
    c->state = CONN_READY;
    c->ready_since = mono_ms();
    if (*c->server_version)
        log_info("redis %s connection ready (server %s)", role_names[c->role], c->server_version);
    else
        log_info("redis %s connection ready", role_names[c->role]);
    if (c->hooks.ready)
        c->hooks.ready(c->hooks.arg);
}

/* The server refused this connection for a reason a retry soon will not
 * cure (a wrong password or db, a server too old): drop it and retry slowly,
 * at the longest backoff, rather than spin. */
static void refuse_slowly(struct conn *c, const char *why)
{
    c->failures = 10;
    drop_context(c, why);
}

/* One handshake reply accepted: the connection is ready after the last. */
static void handshake_step(struct conn *c)
{
    if (--c->handshake_left == 0)
        became_ready(c);
}

static void handshake_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct conn *c = priv;
    if (!reply || !c->ac || c->state != CONN_HANDSHAKE)
        return;     /* the connection went meanwhile */
    if (reply->type == REDIS_REPLY_ERROR) {
        log_error("redis %s connection: %s", role_names[c->role], reply->str);
        refuse_slowly(c, "authentication or SELECT refused");
        return;
    }
    handshake_step(c);
}

/* The server's version, from HELLO's reply (a flat list of names and values
 * in RESP2): "" when it is not there (any reply but an array: an error, a
 * status, an integer, a nil; or an array without "version"). */
static void hello_version(const redisReply *reply, char *out, size_t size)
{
    *out = 0;
    if (reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *name = reply->element[i], *value = reply->element[i + 1];
        if (name->type == REDIS_REPLY_STRING && !strcmp(name->str, "version") &&
            value->type == REDIS_REPLY_STRING) {
            snprintf(out, size, "%s", value->str);
            return;
        }
    }
}

/* A run of 1-9 digits at *P, as a number; P moves past it. -1: none. */
static int version_number(const char **p)
{
    size_t n = strspn(*p, "0123456789");
    if (!n || n > 9)
        return -1;
    int v = atoi(*p);
    *p += n;
    return v;
}

/* "MAJOR.MINOR" at the start of VERSION, whatever follows (".16", "-rc1").
 * False for anything else ("abc", "7", "-1.0", "99999999999.0"): such a
 * version cannot be compared, and counts as unknown. */
static bool version_read(const char *version, int *major, int *minor)
{
    const char *p = version;
    *major = version_number(&p);
    if (*major < 0 || *p++ != '.')
        return false;
    *minor = version_number(&p);
    return *minor >= 0;
}

static bool version_too_old(int major, int minor)
{
    return major < REDIS_MIN_MAJOR || (major == REDIS_MIN_MAJOR && minor < REDIS_MIN_MINOR);
}

static void refuse_server(struct conn *c, const char *why)
{
    log_error("redis %s connection: %s; jobd needs Redis %d.%d or later (XPENDING ... IDLE, "
              "ZADD GT); no job is read until it is", role_names[c->role], why, REDIS_MIN_MAJOR,
              REDIS_MIN_MINOR);
    refuse_slowly(c, "server too old");
}

/* HELLO 2 (RESP2, what hiredis 0.14.1 reads) tells the server's version. A
 * server that does not know HELLO is older than 6.0, and one that says a
 * version before 6.2 is too old: both are refused. Any other answer leaves
 * the version unknown, which is no proof of an old server (an ACL without
 * HELLO, a proxy that answers for the server, a fork with its own version
 * scheme): the connection is used, with a warning said once per daemon. That
 * is a refusal (NOPROTO...), a status, an integer, a nil, an array without
 * "version", or a version that is not MAJOR.MINOR ("abc", "7"). */
static void hello_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct conn *c = priv;
    if (!reply || !c->ac || c->state != CONN_HANDSHAKE)
        return;     /* the connection went meanwhile */
    if (reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "ERR unknown command", 19)) {
        refuse_server(c, "the server does not know HELLO, so it is older than Redis 6.0");
        return;
    }
    hello_version(reply, c->server_version, sizeof(c->server_version));
    int major, minor;
    bool known = version_read(c->server_version, &major, &minor);
    if (known && version_too_old(major, minor)) {
        char why[96];
        snprintf(why, sizeof(why), "the server is Redis %s", c->server_version);
        refuse_server(c, why);
        return;
    }
    if (!known && !r->version_unknown_said) {
        char said[sizeof(c->server_version) + 32];
        snprintf(said, sizeof(said), "HELLO said version \"%s\"", c->server_version);
        r->version_unknown_said = true;
        log_warn("redis %s connection: could not learn the server's version (%s); jobd needs "
                 "Redis %d.%d or later", role_names[c->role],
                 reply->type == REDIS_REPLY_ERROR ? reply->str
                 : *c->server_version             ? said
                                                  : "HELLO did not say",
                 REDIS_MIN_MAJOR, REDIS_MIN_MINOR);
    }
    handshake_step(c);
}

static struct call *call_new(struct conn *c, redis_reply_fn *fn, void *priv, int64_t timeout_ms);
static int call_sent(struct conn *c, struct call *call, int rc);
static void call_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* The command connection's handshake ends with an empty MULTI and EXEC:
 * every outcome is stored with its acknowledgement in one transaction
 * (result.c), and an ACL user without them broke that silently. Without
 * MULTI, the commands meant for one ran one by one as they came and EXEC
 * failed ("without MULTI"), so each outcome was written, counted and
 * published again every second; without EXEC, Redis discarded every
 * transaction (EXECABORT) and no outcome was ever stored, with no word of
 * why. Refused, the connection is refused like a wrong password, saying
 * why; sent with the rest of the handshake, it costs no round trip.
 *
 * Only a refusal of the commands themselves counts: NOPERM (also inside an
 * EXECABORT), or a command renamed away. Any other error says nothing about
 * them and passes: a long script running (EXECABORT ... BUSY: MULTI and EXEC
 * are let through a busy Redis, the transaction is discarded, and the
 * connection is out of it either way), LOADING; the outcomes' own path
 * handles those. */
static bool refuses_transactions(const char *err)
{
    return strstr(err, "NOPERM") || !strncmp(err, "ERR unknown command", 19);
}

static void transaction_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct conn *c = priv;
    if (!reply || !c->ac || c->state != CONN_HANDSHAKE)
        return;     /* the connection went meanwhile (or MULTI's refusal dropped it) */
    if (reply->type == REDIS_REPLY_ERROR && refuses_transactions(reply->str)) {
        log_error("redis %s connection: MULTI/EXEC refused: %s; jobd stores each outcome with "
                  "its acknowledgement in one MULTI/EXEC: allow both (+multi +exec) for "
                  "redis.username; no outcome is stored until then", role_names[c->role],
                  reply->str);
        refuse_slowly(c, "MULTI/EXEC refused");
        return;
    }
    handshake_step(c);
}

/* A handshake command: sent while redis_ready() is still false. */
static void handshake_send(struct conn *c, redis_reply_fn *fn, int argc, const char **argv)
{
    struct call *call = call_new(c, fn, c, 0);
    if (call && call_sent(c, call, redisAsyncCommandArgv(c->ac, call_reply, call, argc, argv,
                                                         NULL)) == 0)
        c->handshake_left++;
    else
        drop_context(c, "out of memory");
}

static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    const struct config *cfg = &c->r->d->cfg;
    if (!c->ac)
        return;
    c->state = CONN_HANDSHAKE;
    c->handshake_left = 0;
    if (cfg->redis_password && *cfg->redis_password) {
        if (cfg->redis_username && *cfg->redis_username) {
            const char *argv[] = {"AUTH", cfg->redis_username, cfg->redis_password};
            handshake_send(c, handshake_reply, 3, argv);
        } else {
            const char *argv[] = {"AUTH", cfg->redis_password};
            handshake_send(c, handshake_reply, 2, argv);
        }
    }
    /* SELECT is meaningless for pub/sub, and the subscriber sends nothing but
     * (P)SUBSCRIBE once subscribed. */
    if (c->ac && cfg->redis_db && c->role != REDIS_SUB) {
        char db[16];
        snprintf(db, sizeof(db), "%d", cfg->redis_db);
        const char *argv[] = {"SELECT", db};
        handshake_send(c, handshake_reply, 2, argv);
    }
    if (c->ac) {
        const char *argv[] = {"HELLO", "2"};
        *c->server_version = 0;
        handshake_send(c, hello_reply, 2, argv);
    }
    if (c->ac && c->role == REDIS_CMD) {
        const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
        handshake_send(c, transaction_reply, 1, multi);
        if (c->ac)
            handshake_send(c, transaction_reply, 1, exec);
    }
    if (c->ac && c->state == CONN_HANDSHAKE && c->handshake_left == 0)
        became_ready(c);
}

static void conn_connect(struct conn *c)
{
    const struct config *cfg = &c->r->d->cfg;
    redisAsyncContext *ac;
    if (cfg->redis_path && *cfg->redis_path)
        ac = redisAsyncConnectUnix(cfg->redis_path);
    else
        ac = redisAsyncConnect(cfg->redis_host, cfg->redis_port);
    if (!ac) {
        log_error("redis %s connection: out of memory", role_names[c->role]);
        conn_schedule_retry(c);
        return;
    }
    if (ac->err) {
        log_warn("redis %s connection: %s", role_names[c->role], ac->errstr);
        redisAsyncFree(ac);
        conn_schedule_retry(c);
        return;
    }
    /* The stream and command connections bring stream entries (XREADGROUP;
     * reclaim's XCLAIM and XRANGE): one too long to be a job is dropped as
     * it arrives instead of held whole (redis_loop.h), and so are the
     * fields of one with too many of them, where each role's replies hold
     * an entry's fields. Not the subscriber: Redis closes it rather than
     * send it a message over its pubsub client output limit (32 MB by
     * default), and a message under that is read whole and refused as
     * too_large by the runner. */
    const int64_t *max = c->role == REDIS_SUB ? NULL : &c->r->d->cfg.max_job_bytes;
    unsigned fields_depth = c->role == REDIS_STREAM ? REDIS_LOOP_FIELDS_DEPTH
                            : c->role == REDIS_CMD  ? REDIS_LOOP_CLAIMED_FIELDS_DEPTH
                                                    : 0;
    if (redis_loop_attach(ac, c->r->d->base, max, fields_depth)) {
        log_error("redis %s connection: out of memory", role_names[c->role]);
        redisAsyncFree(ac);
        conn_schedule_retry(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->reads_seen = 0;
    c->generation++;
    c->state = CONN_CONNECTING;
    c->connect_started = mono_ms();
    c->outstanding = 0;
    c->calls = (struct list){0};
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (c->failures > 0)
        c->r->reconnects++;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_connect(arg);
}

/* Whether bytes came on C since the last check. Replies come in order, so
 * while a command is unanswered they are its reply, still coming: a long one
 * (an XREADGROUP of big entries, dropped as they come: redis_loop.h) may
 * take longer than a command may wait, and is no sign of a silent server. */
static bool heard_since_check(struct conn *c)
{
    uint64_t reads = c->ac ? redis_loop_reads(c->ac) : 0;
    bool heard = reads != c->reads_seen;
    c->reads_seen = reads;
    return heard;
}

static void check_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis *r = arg;
    int64_t now = mono_ms();
    for (int i = 0; i < REDIS_NROLES; i++) {
        struct conn *c = &r->conns[i];
        bool heard = heard_since_check(c);
        if (c->state == CONN_CONNECTING && now - c->connect_started > CONNECT_TIMEOUT_MS)
            drop_context(c, "connect timed out");
        else if ((c->state == CONN_READY || c->state == CONN_HANDSHAKE) && c->calls.head &&
                 now > list_entry(c->calls.head, struct call, link)->deadline && !heard)
            drop_context(c, "command timed out");
        else if (c->state == CONN_READY && c->failures && now - c->ready_since > HEALTHY_AFTER_MS)
            c->failures = 0;
    }
}

struct redis *redis_create(struct daemon *d)
{
    struct redis *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->d = d;
    for (int i = 0; i < REDIS_NROLES; i++) {
        struct conn *c = &r->conns[i];
        c->r = r;
        c->role = i;
        c->retry_timer = evtimer_new(d->base, retry_cb, c);
        c->ready_event = event_new(d->base, -1, 0, ready_cb, c);
    }
    r->check_timer = timer_new_periodic(d->base, CHECK_INTERVAL_MS, check_cb, r);
    return r;
}

void redis_set_hooks(struct redis *r, enum redis_role role, const struct redis_hooks *hooks)
{
    r->conns[role].hooks = *hooks;
}

void redis_start(struct redis *r)
{
    for (int i = 0; i < REDIS_NROLES; i++)
        conn_connect(&r->conns[i]);
}

void redis_free(struct redis *r)
{
    if (!r)
        return;
    r->stopping = true;
    for (int i = 0; i < REDIS_NROLES; i++) {
        struct conn *c = &r->conns[i];
        c->hooks.down = NULL;
        if (c->ac) {
            redisAsyncContext *ac = c->ac;
            c->ac = NULL;
            ac->data = NULL;
            redisAsyncFree(ac);
        }
        event_free(c->retry_timer);
        event_free(c->ready_event);
    }
    event_free(r->check_timer);
    free(r->resp.p);
    free(r);
}

const char *redis_role_name(enum redis_role role)
{
    return role_names[role];
}

bool redis_ready(const struct redis *r, enum redis_role role)
{
    return r->conns[role].state == CONN_READY && r->conns[role].ac;
}

const char *redis_down_reason(const struct redis *r, enum redis_role role)
{
    return r->conns[role].down_reason;
}

bool redis_connecting(const struct redis *r, enum redis_role role)
{
    return r->conns[role].state == CONN_CONNECTING || r->conns[role].state == CONN_HANDSHAKE;
}

redisAsyncContext *redis_context(struct redis *r, enum redis_role role)
{
    return redis_ready(r, role) ? r->conns[role].ac : NULL;
}

static void call_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct call *call = privdata;
    struct conn *c = call->c;
    if (call->generation == c->generation && c->outstanding > 0) {
        c->outstanding--;
        /* Replies come in order: CALL is the oldest. (A deadline is the age
         * of the oldest command still unanswered; newer commands do not
         * extend it, or a steady trickle of them hid a silent server.) */
        list_remove(&c->calls, &call->link);
    }
    if (call->fn)
        call->fn(c->r, reply, call->priv);
    free(call);
}

/* The bookkeeping of one command about to go out on C; NULL when out of memory. */
static struct call *call_new(struct conn *c, redis_reply_fn *fn, void *priv, int64_t timeout_ms)
{
    struct call *call = malloc(sizeof(*call));
    if (!call)
        return NULL;
    call->c = c;
    call->generation = c->generation;
    call->fn = fn;
    call->priv = priv;
    call->deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : COMMAND_TIMEOUT_MS);
    return call;
}

/* CALL went out (0), or hiredis refused it (-1, and it is freed). */
static int call_sent(struct conn *c, struct call *call, int rc)
{
    if (rc != REDIS_OK) {
        free(call);
        return -1;
    }
    c->outstanding++;
    list_append(&c->calls, &call->link);
    return 0;
}

int redis_send(struct redis *r, enum redis_role role, redis_reply_fn *fn, void *priv,
               int64_t timeout_ms, int argc, const char **argv, const size_t *lens)
{
    struct conn *c = &r->conns[role];
    if (!redis_ready(r, role))
        return -1;
    struct call *call = call_new(c, fn, priv, timeout_ms);
    if (!call)
        return -1;
    return call_sent(c, call, redisAsyncCommandArgv(c->ac, call_reply, call, argc, argv, lens));
}

/* RESP: *<argc> then $<len> <bytes> per argument, each line ending in CRLF. */
static void resp_header(struct jbuf *b, char kind, size_t n)
{
    jbuf_raw(b, &kind, 1);
    jbuf_int(b, (int64_t)n);
    jbuf_lit(b, "\r\n");
}

int redis_send_queued(struct redis *r, enum redis_role role, redisCallbackFn *fn, void *priv,
                      int argc, const char **argv, const size_t *lens)
{
    struct jbuf *resp = &r->resp;
    struct conn *c = &r->conns[role];
    if (!redis_ready(r, role))
        return -1;
    resp->len = 0;
    resp_header(resp, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t n = lens ? lens[i] : strlen(argv[i]);
        resp_header(resp, '$', n);
        jbuf_raw(resp, argv[i], n);
        jbuf_lit(resp, "\r\n");
    }
    if (resp->failed) {
        free(jbuf_take(resp, NULL));
        return -1;
    }
    /* hiredis peeks one byte past a one-argument command (hasnext in
     * __redisAsyncCommand): a NUL there, as its own sds strings have. The
     * buffer always keeps room for it. */
    resp->p[resp->len] = '\0';
    return redisAsyncFormattedCommand(c->ac, fn, priv, resp->p, resp->len) == REDIS_OK ? 0 : -1;
}

int redis_sendf(struct redis *r, enum redis_role role, redis_reply_fn *fn, void *priv,
                const char *fmt, ...)
{
    struct conn *c = &r->conns[role];
    if (!redis_ready(r, role))
        return -1;
    struct call *call = call_new(c, fn, priv, 0);
    if (!call)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(c->ac, call_reply, call, fmt, ap);
    va_end(ap);
    return call_sent(c, call, rc);
}

void redis_reset(struct redis *r, enum redis_role role, const char *why)
{
    struct conn *c = &r->conns[role];
    if (c->ac)
        drop_context(c, why);
}

int redis_outstanding(const struct redis *r, enum redis_role role)
{
    return r->conns[role].outstanding;
}

uint64_t redis_reconnects(const struct redis *r)
{
    return r->reconnects;
}

bool redis_key_error(const char *err)
{
    return !strncmp(err, "WRONGTYPE", 9) || (!strncmp(err, "NOPERM", 6) && strstr(err, " key"));
}

bool redis_stream_full(const char *err)
{
    return !strncmp(err, "ERR The stream has exhausted", 28);
}
