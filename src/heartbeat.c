/* heartbeat.c - the worker key (see heartbeat.h). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "heartbeat.h"
#include "intake.h"
#include "pgpool.h"
#include "job.h"
#include "redis.h"
#include "runner.h"
#include "scheduler.h"
#include "threadpool.h"
#include "timer.h"

#define EVERY_MS 3000
#define TTL_S "10"

struct heartbeat {
    struct daemon *d;
    struct event *timer;
    bool live;                  /* written at least once: keep refreshing */
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
        "{s:s, s:s, s:i, s:I, s:I, s:b, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I}, "
        "s:{s:I, s:I, s:I, s:I, s:I, s:I}, s:{s:i, s:i, s:i}, s:I}",
        "worker", d->worker_id, "version", PACKAGE_VERSION, "pid", (int)getpid(), "started_at",
        (json_int_t)d->started_at, "updated_at", (json_int_t)now_ms(), "draining", d->draining,
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

static void write_snapshot(struct heartbeat *hb)
{
    struct daemon *d = hb->d;
    char key[256];
    snprintf(key, sizeof(key), "%s:worker:%s", d->cfg.ns, d->worker_id);
    json_t *snap = heartbeat_snapshot(d);
    char *text = snap ? json_dumps(snap, JSON_COMPACT) : NULL;
    json_decref(snap);
    if (!text)
        return;
    const char *argv[] = {"SET", key, text, "EX", TTL_S};
    redis_send(d->redis, REDIS_CMD, NULL, NULL, 0, 5, argv, NULL);
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

void heartbeat_remove(struct heartbeat *hb)
{
    struct daemon *d = hb->d;
    char key[256];
    hb->live = false;
    snprintf(key, sizeof(key), "%s:worker:%s", d->cfg.ns, d->worker_id);
    const char *argv[] = {"DEL", key};
    redis_send(d->redis, REDIS_CMD, NULL, NULL, 0, 2, argv, NULL);
}
