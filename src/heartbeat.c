/* heartbeat.c - the worker key (see heartbeat.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "heartbeat.h"
#include "intake.h"
#include "log.h"
#include "pgpool.h"
#include "job.h"
#include "redis.h"
#include "runner.h"
#include "scheduler.h"
#include "threadpool.h"
#include "timer.h"

#define EVERY_MS 3000
#define TTL_S "10"
#define COLLISION_LOG_EVERY_MS 60000

struct heartbeat {
    struct daemon *d;
    struct event *timer;
    bool live;                  /* written at least once: keep refreshing */
    /* This process's random instance token, written in every snapshot. The
     * worker name alone cannot tell two live daemons that share it (same
     * host name and pid in two containers, or one worker.name) from this
     * daemon's own restarted predecessor, whose key lingers up to its TTL. */
    char instance[17];
    bool wrote;                 /* a snapshot of ours was stored at least once */
    uint64_t collisions;        /* writes that found another instance's snapshot */
    int64_t collision_log_at;   /* mono ms: next time a collision may be logged */
};

static json_t *string_array(char **items, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_string(items[i]));
    return a;
}

json_t *heartbeat_snapshot(const struct daemon *d)
{
    struct runner_counts c;
    runner_counts(d->runner, &c);
    json_t *s = json_pack(
        "{s:s, s:s, s:s, s:i, s:I, s:I, s:b, s:I, "
        "s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I}, "
        "s:{s:I, s:I, s:I, s:I, s:I, s:I}, s:{s:i, s:i, s:i}, s:I}",
        "worker", d->worker_id, "instance", d->heartbeat->instance, "version", PACKAGE_VERSION,
        "pid", (int)getpid(), "started_at", (json_int_t)d->started_at, "updated_at",
        (json_int_t)now_ms(), "draining", d->draining, "name_collisions",
        (json_int_t)d->heartbeat->collisions,
        "jobs", "inflight", c.inflight, "queued", c.queued, "running", c.running, "storing",
        c.storing, "unstored", c.unstored, "max_inflight", d->cfg.max_inflight,
        "group_children_running", c.child_running, "group_children_queued", c.child_queued,
        "max_group_children", d->cfg.max_group_children, "held_bytes", (json_int_t)c.held_bytes,
        "max_held_bytes", (json_int_t)d->cfg.max_held_bytes, "totals",
        "accepted", (json_int_t)c.accepted, "succeeded", (json_int_t)c.succeeded, "failed",
        (json_int_t)c.failed, "rejected", (json_int_t)c.rejected, "retried",
        (json_int_t)c.retried, "requeued", (json_int_t)c.requeued, "threads", "size",
        threadpool_size(d->pool), "busy", threadpool_busy(d->pool), "queued",
        threadpool_queued(d->pool), "redis_reconnects", (json_int_t)redis_reconnects(d->redis));
    struct pgpool_counts pg;
    pgpool_counts(d->pgpool, &pg);
    if (s && d->pgpool)
        json_object_set_new(s, "postgres",
                            json_pack("{s:i, s:i, s:i, s:i, s:i}", "open", pg.open, "busy",
                                      pg.busy, "idle", pg.idle, "waiting", pg.waiting,
                                      "inflight", pg.inflight));
    if (s) {
        json_object_set_new(s, "channels", string_array(d->cfg.channels, d->cfg.nchannels));
        json_object_set_new(s, "streams", string_array(d->cfg.streams, d->cfg.nstreams));
    }
    return s;
}

static void worker_key(const struct daemon *d, char *buf, size_t len)
{
    snprintf(buf, len, "%s:worker:%s", d->cfg.ns, d->worker_id);
}

/* SET ... GET's reply: the snapshot this write replaced. Another instance's
 * there after one of ours was stored means a live daemon with the same name
 * wrote in between. Before our first write it is only a predecessor's (a
 * restart under the same name), which stops writing when it dies. */
static void written(struct redis *r, redisReply *reply, void *priv)
{
    struct heartbeat *hb = priv;
    if (!reply)
        return;     /* connection lost: the next tick writes again */
    if (reply->type == REDIS_REPLY_ERROR) {
        /* SET ... GET refuses to replace a key of another type, which a
         * plain SET did: clear it for the next tick. */
        if (!strncmp(reply->str, "WRONGTYPE", 9)) {
            char key[256];
            worker_key(hb->d, key, sizeof(key));
            const char *argv[] = {"DEL", key};
            redis_send(r, REDIS_CMD, NULL, NULL, 0, 2, argv, NULL);
        }
        return;
    }
    bool wrote_before = hb->wrote;
    hb->wrote = true;
    if (reply->type != REDIS_REPLY_STRING || !wrote_before)
        return;     /* nil: no key (first write, expired, deleted by a clean exit) */
    json_t *old = json_loads(reply->str, 0, NULL);
    const char *theirs = json_string_value(json_object_get(old, "instance"));
    if (theirs && !strcmp(theirs, hb->instance)) {
        json_decref(old);
        return;
    }
    hb->collisions++;
    int64_t now = mono_ms();
    if (now >= hb->collision_log_at) {
        struct daemon *d = hb->d;
        hb->collision_log_at = now + COLLISION_LOG_EVERY_MS;
        log_error("worker name %s is also used by another running jobd (instance %.16s "
                  "replaced this one's %s in %s:worker:%s): the two share one consumer in "
                  "stream group jobd and one worker key, and only one shows in jobctl workers. "
                  "Give each daemon its own worker.name in its configuration file and restart "
                  "it (%" PRIu64 " collision(s) so far; logged at most once a minute)",
                  d->worker_id, theirs ? theirs : "?", hb->instance, d->cfg.ns, d->worker_id,
                  hb->collisions);
    }
    json_decref(old);
}

static void write_snapshot(struct heartbeat *hb)
{
    struct daemon *d = hb->d;
    char key[256];
    worker_key(d, key, sizeof(key));
    json_t *snap = heartbeat_snapshot(d);
    char *text = snap ? json_dumps(snap, JSON_COMPACT) : NULL;
    json_decref(snap);
    if (!text)
        return;
    /* GET: the replaced value, read in the same atomic step (Redis 6.2+). */
    const char *argv[] = {"SET", key, text, "EX", TTL_S, "GET"};
    redis_send(d->redis, REDIS_CMD, written, hb, 0, 6, argv, NULL);
    free(text);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct heartbeat *hb = arg;
    if (hb->live && redis_ready(hb->d->redis, REDIS_CMD))
        write_snapshot(hb);
}

struct heartbeat *heartbeat_create(struct daemon *d)
{
    struct heartbeat *hb = calloc(1, sizeof(*hb));
    if (!hb)
        return NULL;
    hb->d = d;
    uint64_t token;
    /* srandom() was seeded with the time and pid: a poorer token, still. */
    if (getrandom(&token, sizeof(token), 0) != (ssize_t)sizeof(token))
        token = (uint64_t)random() << 32 ^ (uint64_t)random();
    snprintf(hb->instance, sizeof(hb->instance), "%016" PRIx64, token);
    hb->timer = timer_new_periodic(d->base, EVERY_MS, tick, hb);
    return hb;
}

void heartbeat_free(struct heartbeat *hb)
{
    if (!hb)
        return;
    event_free(hb->timer);
    free(hb);
}

void heartbeat_now(struct heartbeat *hb)
{
    hb->live = true;
    if (redis_ready(hb->d->redis, REDIS_CMD))
        write_snapshot(hb);
}

uint64_t heartbeat_collisions(const struct heartbeat *hb)
{
    return hb->collisions;
}

void heartbeat_remove(struct heartbeat *hb)
{
    struct daemon *d = hb->d;
    char key[256];
    hb->live = false;
    worker_key(d, key, sizeof(key));
    const char *argv[] = {"DEL", key};
    redis_send(d->redis, REDIS_CMD, NULL, NULL, 0, 2, argv, NULL);
}
