/* reclaim.c - claiming abandoned stream entries (see reclaim.h).
 *
 * XPENDING with IDLE lists entries idle past the visibility timeout with
 * their delivery counts; XCLAIM with the same min-idle-time takes them, and
 * only one of several daemons racing for an entry gets it (the claim resets
 * its idle time). Both run on the command connection: the stream connection
 * is parked in a blocking XREADGROUP.
 */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "job.h"
#include "log.h"
#include "reclaim.h"
#include "redis.h"
#include "runner.h"

#define GROUP "jobd"
#define MAX_CLAIM 100

struct reclaim {
    struct daemon *d;
    struct event *timer;
    int busy;                   /* XPENDING/XCLAIM replies still to come */
    uint64_t claimed;
};

/* ---- keeping our own long jobs' entries fresh ------------------------------ */

static void refresh_one(const struct job *job, void *arg)
{
    struct reclaim *rc = arg;
    /* JUSTID: only reset the idle time, do not count a delivery. */
    const char *argv[] = {"XCLAIM", job->stream, GROUP, rc->d->worker_id, "0", job->entry_id,
                          "JUSTID"};
    redis_send(rc->d->redis, REDIS_CMD, NULL, NULL, 0, 7, argv, NULL);
}

/* ---- claiming abandoned entries -------------------------------------------- */

struct claim {
    struct reclaim *rc;
    char *stream;
    int deliveries;             /* > 0: poison, with this many deliveries */
};

static void take_claimed(struct claim *c, const redisReply *entry)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *fields = entry->element[1];
    struct job_message msg = {
        .source = SOURCE_STREAM,
        .stream = c->stream,
        .entry_id = entry->element[0]->str,
        .redelivered = true,
        .poison_deliveries = c->deliveries,
        .raw = "",
    };
    if (fields->type != REDIS_REPLY_ARRAY) {
        msg.problem = "stream entry was deleted while pending";
    } else {
        for (size_t i = 0; i + 1 < fields->elements; i += 2) {
            const redisReply *k = fields->element[i], *v = fields->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(k->str, "job")) {
                msg.raw = v->str;
                msg.raw_len = v->len;
            } else if (!strcmp(k->str, "id")) {
                msg.id = v->str;
            } else if (!strcmp(k->str, "attempts")) {
                msg.attempts = atoi(v->str) > 0 && atoi(v->str) < 1000 ? atoi(v->str) : 0;
            } else if (!strcmp(k->str, "queued_at")) {
                msg.queued_at = strtoll(v->str, NULL, 10);
            } else if (!strcmp(k->str, "due")) {
                msg.due_ms = strtoll(v->str, NULL, 10);
                msg.has_due = msg.due_ms > 0;
            }
        }
        if (!msg.raw_len && !msg.problem)
            msg.problem = "stream entry has no \"job\" field";
    }
    c->rc->claimed++;
    log_info("reclaimed %s %s from a consumer that went quiet%s", c->stream, msg.entry_id,
             c->deliveries ? " (poison)" : "");
    runner_accept(c->rc->d->runner, &msg);
}

static void claim_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct claim *c = priv;
    c->rc->busy--;
    if (reply && reply->type == REDIS_REPLY_ARRAY && !c->rc->d->draining)
        for (size_t i = 0; i < reply->elements; i++)
            take_claimed(c, reply->element[i]);
    else if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements)
        log_info("shutdown: %zu claimed entr(ies) left pending for another daemon",
                 reply->elements);
    free(c->stream);
    free(c);
}

static void send_claim(struct reclaim *rc, const char *stream, const char **ids, int n,
                       int deliveries)
{
    if (n == 0)
        return;
    struct claim *c = calloc(1, sizeof(*c));
    const char **argv = calloc((size_t)n + 5, sizeof(*argv));
    char idle[24];
    if (!c || !argv || !(c->stream = strdup(stream))) {
        free(c);
        free(argv);
        return;
    }
    c->rc = rc;
    c->deliveries = deliveries;
    snprintf(idle, sizeof(idle), "%" PRId64, rc->d->cfg.visibility_timeout_ms);
    argv[0] = "XCLAIM";
    argv[1] = stream;
    argv[2] = GROUP;
    argv[3] = rc->d->worker_id;
    argv[4] = idle;
    for (int i = 0; i < n; i++)
        argv[5 + i] = ids[i];
    if (redis_send(rc->d->redis, REDIS_CMD, claim_reply, c, 0, n + 5, argv, NULL) == 0) {
        rc->busy++;
    } else {
        free(c->stream);
        free(c);
    }
    free(argv);
}

struct pending {
    struct reclaim *rc;
    char *stream;
};

static void pending_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct pending *p = priv;
    struct reclaim *rc = p->rc;
    rc->busy--;
    if (reply && reply->type == REDIS_REPLY_ARRAY && !rc->d->draining) {
        const char *fresh[MAX_CLAIM], *poison[MAX_CLAIM];
        int nfresh = 0, npoison = 0, most = 0;
        for (size_t i = 0; i < reply->elements && i < MAX_CLAIM; i++) {
            /* [id, consumer, idle ms, deliveries] */
            const redisReply *e = reply->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 4 ||
                e->element[0]->type != REDIS_REPLY_STRING ||
                e->element[3]->type != REDIS_REPLY_INTEGER)
                continue;
            if (runner_holds_entry(rc->d->runner, p->stream, e->element[0]->str))
                continue;
            if (e->element[3]->integer >= RECLAIM_MAX_DELIVERIES) {
                poison[npoison++] = e->element[0]->str;
                if (e->element[3]->integer > most)
                    most = (int)e->element[3]->integer;
            } else {
                fresh[nfresh++] = e->element[0]->str;
            }
        }
        send_claim(rc, p->stream, fresh, nfresh, 0);
        send_claim(rc, p->stream, poison, npoison, most + 1);
    } else if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOGROUP", 7)) {
        log_warn("XPENDING %s: %s", p->stream, reply->str);
    }
    free(p->stream);
    free(p);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct reclaim *rc = arg;
    struct daemon *d = rc->d;
    if (rc->busy || !redis_ready(d->redis, REDIS_CMD))
        return;
    /* Refresh entries we have held for a third of the timeout. */
    runner_foreach_stream_job(d->runner, d->cfg.visibility_timeout_ms / 3, refresh_one, rc);
    if (d->draining)
        return;
    int room = d->cfg.max_inflight - runner_inflight(d->runner);
    if (room <= 0)
        return;
    if (room > MAX_CLAIM)
        room = MAX_CLAIM;
    char idle[24], count[16];
    snprintf(idle, sizeof(idle), "%" PRId64, d->cfg.visibility_timeout_ms);
    snprintf(count, sizeof(count), "%d", room);
    for (int s = 0; s < d->cfg.nstreams; s++) {
        struct pending *p = calloc(1, sizeof(*p));
        if (!p || !(p->stream = strdup(d->cfg.streams[s]))) {
            free(p);
            continue;
        }
        p->rc = rc;
        const char *argv[] = {"XPENDING", p->stream, GROUP, "IDLE", idle, "-", "+", count};
        if (redis_send(d->redis, REDIS_CMD, pending_reply, p, 0, 8, argv, NULL) == 0) {
            rc->busy++;
        } else {
            free(p->stream);
            free(p);
        }
    }
}

struct reclaim *reclaim_create(struct daemon *d)
{
    struct reclaim *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return NULL;
    rc->d = d;
    int64_t every = d->cfg.visibility_timeout_ms / 4;
    if (every < 250)
        every = 250;
    if (every > 10000)
        every = 10000;
    rc->timer = event_new(d->base, -1, EV_PERSIST, tick, rc);
    struct timeval tv = {every / 1000, (every % 1000) * 1000};
    evtimer_add(rc->timer, &tv);
    return rc;
}

void reclaim_free(struct reclaim *rc)
{
    if (!rc)
        return;
    event_free(rc->timer);
    free(rc);
}

uint64_t reclaim_claimed(const struct reclaim *rc)
{
    return rc->claimed;
}
