/* cancels.c - the ids cancelled within jobs.cancel_ttl (see cancels.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cancels.h"
#include "daemon.h"
#include "envelope.h"
#include "job.h"
#include "log.h"
#include "runner.h"
#include "timer.h"

/* A read of NS:cancels that Redis answered with an error about itself
 * (LOADING after a restart, BUSY) is sent again this often: the stream
 * connection reads no job meanwhile, and a backlog read at once is a burst
 * (bench/soak saw the HTTP connection cache grow after such bursts). */
#define LOAD_RETRY_MS 200

/* One read of NS:cancels, on one connection. */
struct load {
    struct cancels *c;
    enum redis_role role;
    unsigned generation;        /* stale once the role's next read was asked */
    cancels_loaded_fn *done;
    void *arg;
    struct event *retry;
};

struct cancels {
    struct daemon *d;
    /* id -> when its cancel expires (ms), oldest first: jansson keeps
     * insertion order, and eviction goes by it. */
    json_t *until;
    json_t *unstored;           /* id -> until: heard while the command connection was down */
    unsigned generation[REDIS_NROLES];
    struct load *loads[REDIS_NROLES];   /* waiting to be sent again, or NULL */
    bool cmd_load_due;          /* the command connection's read is owed */
    bool store_failing;         /* the last write to NS:cancels was refused */
    bool load_failing;          /* the last read of NS:cancels was refused */
};

struct cancels *cancels_create(struct daemon *d)
{
    struct cancels *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->d = d;
    c->until = json_object();
    c->unstored = json_object();
    if (!c->until || !c->unstored) {
        cancels_free(c);
        return NULL;
    }
    return c;
}

static void load_free(struct load *l)
{
    if (l->retry)
        event_free(l->retry);
    free(l);
}

void cancels_free(struct cancels *c)
{
    if (!c)
        return;
    for (int i = 0; i < REDIS_NROLES; i++)
        if (c->loads[i])
            load_free(c->loads[i]);
    json_decref(c->until);
    json_decref(c->unstored);
    free(c);
}

static void forget_expired(struct cancels *c)
{
    int64_t now = now_ms();
    const char *key;
    json_t *value;
    void *tmp;
    json_object_foreach_safe(c->until, tmp, key, value) {
        if (json_integer_value(value) <= now)
            json_object_del(c->until, key);
    }
}

size_t cancels_count(struct cancels *c)
{
    forget_expired(c);
    return json_object_size(c->until);
}

bool cancels_has(const struct cancels *c, const char *id)
{
    json_t *until = json_object_get(c->until, id);
    return until && json_integer_value(until) > now_ms();
}

static void forget_old(struct cancels *c)
{
    forget_expired(c);
    if (json_object_size(c->until) < CANCEL_MEMORY_MAX)
        return;
    /* Still full within the TTL (a flood of cancels, maybe for made-up
     * ids): the oldest tenth goes. Forgetting all of them let a flood undo
     * every real cancel. */
    log_warn("control: %d cancels remembered and none expired (jobs.cancel_ttl %" PRId64 " s, "
             "or longer where another daemon or jobctl kept one longer); forgetting the oldest %d",
             CANCEL_MEMORY_MAX, c->d->cfg.cancel_ttl, CANCEL_MEMORY_MAX / 10);
    size_t drop = CANCEL_MEMORY_MAX / 10;
    const char *key;
    json_t *value;
    void *tmp;
    json_object_foreach_safe(c->until, tmp, key, value) {
        if (!drop--)
            break;
        json_object_del(c->until, key);
    }
}

/* Remember ID until UNTIL (ms), as the newest. True when it was not
 * remembered before (or only expired). */
static bool remember(struct cancels *c, const char *id, int64_t until)
{
    json_t *old = json_object_get(c->until, id);
    bool known = old && json_integer_value(old) > now_ms();
    if (known && json_integer_value(old) > until)
        until = json_integer_value(old);
    /* Deleted and set again, not updated in place: it moves to the end, so
     * that eviction (oldest first) does not take a cancel just heard. */
    if (old)
        json_object_del(c->until, id);
    else if (json_object_size(c->until) >= CANCEL_MEMORY_MAX)
        forget_old(c);
    json_object_set_new(c->until, id, json_integer(until));
    return !known;
}

static void stored_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct cancels *c = priv;
    if (!reply)
        return;     /* lost with the connection: at worst kept in memory only */
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Said once at error level, not once for each cancel of a flood. */
        log_msg(c->store_failing ? LOG_DEBUG : LOG_ERROR,
                "control: keeping a cancel in %s:cancels failed: %s; daemons started later will "
                "not know it", c->d->cfg.ns, reply->str);
        c->store_failing = true;
    } else if (c->store_failing) {
        log_notice("control: keeping cancels in %s:cancels works again", c->d->cfg.ns);
        c->store_failing = false;
    }
}

/* ZADD KEY FLAG SCORE ID [SCORE ID ...] for every entry of IDS (id -> until)
 * on the command connection, then the trims. FLAG: "XX" to only rewrite
 * members that are there; "GT" to add, or only lengthen a member that is
 * there (daemons with a longer jobs.cancel_ttl hear the same cancel, and the
 * longest wins whichever writes last). Returns 0, or -1 when not sent. */
static int store(struct cancels *c, json_t *ids, const char *flag)
{
    size_t n = json_object_size(ids);
    if (!n)
        return 0;
    const char **argv = calloc(3 + 2 * n, sizeof(*argv));
    char *scores = calloc(n, 24);
    if (!argv || !scores) {
        free(argv);
        free(scores);
        return -1;
    }
    char key[160], expired[32], keep[32];
    snprintf(key, sizeof(key), "%s:cancels", c->d->cfg.ns);
    int argc = 0;
    argv[argc++] = "ZADD";
    argv[argc++] = key;
    argv[argc++] = flag;
    const char *id;
    json_t *until;
    size_t i = 0;
    json_object_foreach(ids, id, until) {
        snprintf(scores + 24 * i, 24, "%lld", (long long)json_integer_value(until));
        argv[argc++] = scores + 24 * i++;
        argv[argc++] = id;
    }
    int rc = redis_send(c->d->redis, REDIS_CMD, stored_reply, c, 0, argc, argv, NULL);
    free(argv);
    free(scores);
    if (rc)
        return -1;
    /* Expired ids go, and past CANCEL_MEMORY_MAX the ones expiring soonest:
     * both cost nothing when there is nothing to remove. */
    snprintf(expired, sizeof(expired), "(%lld", (long long)now_ms());
    snprintf(keep, sizeof(keep), "%d", -(CANCEL_MEMORY_MAX + 1));
    const char *trim_old[] = {"ZREMRANGEBYSCORE", key, "-inf", expired};
    const char *trim_many[] = {"ZREMRANGEBYRANK", key, "0", keep};
    redis_send(c->d->redis, REDIS_CMD, NULL, NULL, 0, 4, trim_old, NULL);
    redis_send(c->d->redis, REDIS_CMD, NULL, NULL, 0, 4, trim_many, NULL);
    return 0;
}

void cancels_heard(struct cancels *c, const char *id)
{
    int64_t until = now_ms() + c->d->cfg.cancel_ttl * 1000;
    remember(c, id, until);
    /* Every daemon that hears the cancel writes it (the same member, so it
     * is kept once). One heard while the command connection is down is
     * written once it is back (cancels_cmd_ready()). */
    json_t *one = json_pack("{s:I}", id, (json_int_t)until);
    if (!one || store(c, one, "GT")) {
        if (json_object_size(c->unstored) < CANCEL_MEMORY_MAX)
            json_object_set_new(c->unstored, id, json_integer(until));
        log_debug("control: cancel for %s kept in memory until Redis is back", id);
    }
    json_decref(one);
}

static void send_load(struct load *l);
static void take(struct cancels *c, const redisReply *reply);

static void load_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct load *l = arg;
    l->c->loads[l->role] = NULL;
    send_load(l);
}

/* The read L could not finish (connection lost, or a reply it cannot use).
 * The stream connection's next ready hook asks again; the command
 * connection's read is owed to cmd_ready. */
static void load_dropped(struct load *l)
{
    if (l->role == REDIS_CMD && l->generation == l->c->generation[REDIS_CMD])
        l->c->cmd_load_due = true;
    load_free(l);
}

static void loaded_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct load *l = priv;
    struct cancels *c = l->c;
    if (l->generation != c->generation[l->role]) {
        load_free(l);   /* a newer read was asked on this connection */
        return;
    }
    if (!reply) {
        load_dropped(l);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && !redis_key_error(reply->str)) {
        /* Redis is not ready (LOADING after a restart, BUSY): asked again,
         * and the stream connection reads nothing until it is answered. */
        log_msg(c->load_failing ? LOG_DEBUG : LOG_WARN,
                "control: reading %s:cancels failed: %s; asking again every %d ms", c->d->cfg.ns,
                reply->str, LOAD_RETRY_MS);
        c->load_failing = true;
        if (!l->retry)
            l->retry = evtimer_new(c->d->base, load_retry_cb, l);
        if (l->retry && timer_add_ms(l->retry, LOAD_RETRY_MS) == 0) {
            c->loads[l->role] = l;
            return;
        }
        load_dropped(l);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY) {
        /* About the key (another type, an ACL): only the cancels heard from
         * now on apply, and the reads go on without it. */
        log_msg(c->load_failing ? LOG_DEBUG : LOG_ERROR,
                "control: reading %s:cancels failed: %s; only the cancels heard from now on apply",
                c->d->cfg.ns, reply->type == REDIS_REPLY_ERROR ? reply->str : "not an array");
        c->load_failing = true;
    } else {
        c->load_failing = false;
        take(c, reply);
    }
    if (l->done)
        l->done(l->arg);
    load_free(l);
}

static void take(struct cancels *c, const redisReply *reply)
{
    /* [id, score, id, score, ...], the latest-expiring first. Anyone who can
     * write Redis can write here: an id that could not name a job is
     * skipped, and no cancel is kept longer than jobs.cancel_ttl may be (a
     * year) from now (in memory, and in the set: one kept for ever would
     * come back with every start). Not this daemon's own cancel_ttl: a
     * longer one is another daemon's, and cutting it to ours would undo
     * that daemon's setting for all of them. Taken oldest first, so that
     * the memory's order is the set's. */
    int64_t now = now_ms(), latest = now + (int64_t)CANCEL_TTL_MAX * 1000;
    int learned = 0, skipped = 0;
    json_t *clamped = json_object();
    for (size_t i = reply->elements & ~(size_t)1; i >= 2; i -= 2) {
        const redisReply *id = reply->element[i - 2], *score = reply->element[i - 1];
        if (id->type != REDIS_REPLY_STRING || score->type != REDIS_REPLY_STRING ||
            !envelope_valid_id(id->str, id->len)) {
            skipped++;
            continue;
        }
        /* Compared as a double first: a score may be "inf", and converting
         * that to an integer is undefined. */
        double score_ms = strtod(score->str, NULL);
        if (!(score_ms > (double)now))
            continue;
        int64_t until = latest;
        if (score_ms < (double)latest)
            until = (int64_t)score_ms;
        else if (score_ms > (double)latest + 1000 && clamped)
            json_object_set_new(clamped, id->str, json_integer(latest));
        if (remember(c, id->str, until)) {
            learned++;
            runner_apply_cancel(c->d->runner, id->str);
        }
    }
    if (learned)
        log_info("control: %d cancel(s) read from %s:cancels that this daemon had not heard",
                 learned, c->d->cfg.ns);
    if (skipped)
        log_warn("control: %d member(s) of %s:cancels are not job ids; skipped", skipped,
                 c->d->cfg.ns);
    if (clamped && json_object_size(clamped)) {
        log_warn("control: %zu member(s) of %s:cancels expire more than a year from now (the "
                 "most jobs.cancel_ttl allows); kept for a year", json_object_size(clamped),
                 c->d->cfg.ns);
        store(c, clamped, "XX");
    }
    json_decref(clamped);
}

static void send_load(struct load *l)
{
    struct cancels *c = l->c;
    char key[160], from[32], limit[16];
    snprintf(key, sizeof(key), "%s:cancels", c->d->cfg.ns);
    snprintf(from, sizeof(from), "(%lld", (long long)now_ms());
    snprintf(limit, sizeof(limit), "%d", CANCEL_MEMORY_MAX);
    /* The latest-expiring first, so that a set grown past the limit by
     * hand gives its newest cancels. */
    const char *argv[] = {"ZREVRANGEBYSCORE", key, "+inf", from, "WITHSCORES",
                          "LIMIT", "0", limit};
    if (redis_send(c->d->redis, l->role, loaded_reply, l, 0, 8, argv, NULL))
        load_dropped(l);
}

void cancels_load(struct cancels *c, enum redis_role role, cancels_loaded_fn *done, void *arg)
{
    struct load *l = calloc(1, sizeof(*l));
    if (!l) {
        if (done)   /* out of memory: the reads must not stop for it */
            done(arg);
        return;
    }
    /* A newer read makes any older one on this connection stale. */
    if (c->loads[role]) {
        load_free(c->loads[role]);
        c->loads[role] = NULL;
    }
    l->c = c;
    l->role = role;
    l->generation = ++c->generation[role];
    l->done = done;
    l->arg = arg;
    if (role == REDIS_CMD)
        c->cmd_load_due = false;
    send_load(l);
}

void cancels_cmd_ready(struct cancels *c)
{
    if (json_object_size(c->unstored) && store(c, c->unstored, "GT") == 0)
        json_object_clear(c->unstored);
    if (c->cmd_load_due)
        cancels_load(c, REDIS_CMD, NULL, NULL);
}
