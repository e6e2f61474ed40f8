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
#include "intake.h"
#include "job.h"
#include "log.h"
#include "reclaim.h"
#include "redis.h"
#include "runner.h"
#include "timer.h"

#define GROUP "jobd"
#define MAX_CLAIM 100
/* Nothing is claimed until the command connection has been up this long.
 * Redis's idle clock runs on while Redis is away (restarted from its AOF or
 * RDB, or out of reach of every daemon): after an outage longer than the
 * visibility timeout every entry of every live daemon is "idle", and the
 * first daemon back claimed them all before their holders, reconnecting
 * with backoff (at most 5 s a round, redis.c), could refresh them; both ran
 * them. A holder refreshes all its entries as soon as it is back
 * (reclaim_redis_ready()), well within this. */
#define CLAIM_GRACE_MS 6000

struct reclaim {
    struct daemon *d;
    struct event *timer;
    int busy;                   /* XPENDING/XCLAIM replies still to come */
    int64_t ready_at;           /* mono ms the command connection last came up */
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

/* The context of an XPENDING, XCLAIM or XRANGE reply. */
struct stream_call {
    struct reclaim *rc;
    char *stream;
    int deliveries;             /* XCLAIM of poison entries: how often they were delivered */
    char **ids;                 /* XCLAIM, XRANGE: the entry ids asked for */
    int nids;
};

static void stream_call_free(struct stream_call *call)
{
    for (int i = 0; i < call->nids; i++)
        free(call->ids[i]);
    free(call->ids);
    free(call->stream);
    free(call);
}

/* Copies of IDS into CALL; -1 when out of memory. */
static int keep_ids(struct stream_call *call, const char **ids, int n)
{
    if (n == 0 || !(call->ids = calloc((size_t)n, sizeof(*call->ids))))
        return n == 0 ? 0 : -1;
    for (; call->nids < n; call->nids++)
        if (!(call->ids[call->nids] = strdup(ids[call->nids])))
            return -1;
    return 0;
}

/* Send a command about STREAM and the entries IDS (none for XPENDING); FN
 * gets a stream_call and frees it. Counted in rc->busy until the reply, so
 * ticks do not pile up behind a slow Redis. */
static void send_stream_call(struct reclaim *rc, const char *stream, const char **ids, int nids,
                             int deliveries, redis_reply_fn *fn, int argc, const char **argv)
{
    struct stream_call *call = calloc(1, sizeof(*call));
    if (!call || !(call->stream = strdup(stream)) || keep_ids(call, ids, nids)) {
        if (call)
            stream_call_free(call);
        return;
    }
    call->rc = rc;
    call->deliveries = deliveries;
    if (redis_send(rc->d->redis, REDIS_CMD, fn, call, 0, argc, argv, NULL) == 0)
        rc->busy++;
    else
        stream_call_free(call);
}

static void take_claimed(struct stream_call *c, const redisReply *entry)
{
    struct job_message msg;
    if (intake_parse_entry(entry, c->stream, &msg))
        return;
    msg.poison_deliveries = c->deliveries;
    log_info("reclaimed %s %s from a consumer that went quiet%s", c->stream, msg.entry_id,
             c->deliveries ? " (poison)" : "");
    runner_accept(c->rc->d->runner, &msg);
}

/* ---- entries deleted while pending ----------------------------------------- */

/* The XRANGE of an entry XCLAIM did not return. Empty: it was deleted
 * (XDEL, XTRIM) while pending. Its job text is gone, but it must not vanish
 * without a record: the runner rejects it with the reason, which writes the
 * dead letter and acknowledges the entry (on Redis 6.2 XCLAIM made it ours;
 * Redis 7 dropped it from the group already). Not empty: another daemon
 * claimed it first, and runs it. */
static void deleted_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct stream_call *c = priv;
    c->rc->busy--;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 0 &&
        !c->rc->d->draining) {
        char problem[768];      /* a stream name is up to 512 bytes */
        snprintf(problem, sizeof(problem),
                 "stream entry %s %s was deleted while pending; its job text is gone",
                 c->stream, c->ids[0]);
        log_warn("%s %s was deleted while pending (XDEL or XTRIM) before it was reclaimed; "
                 "dead-lettered", c->stream, c->ids[0]);
        struct job_message msg = {.source = SOURCE_STREAM, .stream = c->stream,
                                  .entry_id = c->ids[0], .raw = "", .problem = problem};
        runner_accept(c->rc->d->runner, &msg);
    }
    stream_call_free(c);
}

static void check_deleted(struct reclaim *rc, const char *stream, const char *id)
{
    const char *argv[] = {"XRANGE", stream, id, id};
    send_stream_call(rc, stream, &id, 1, 0, deleted_reply, 4, argv);
}

static bool claimed(const redisReply *reply, const char *id)
{
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
            e->element[0]->type == REDIS_REPLY_STRING && !strcmp(e->element[0]->str, id))
            return true;
    }
    return false;
}

/* Ids XPENDING listed that XCLAIM did not return: claimed by another daemon
 * (its claim reset the idle time), or deleted while pending. Redis 7 leaves
 * a deleted one out without a word (6.2 answers nil, without its id), and
 * XAUTOCLAIM's list of deleted ids is 7.0+ only: ask the stream. */
static void check_unclaimed(struct stream_call *c, const redisReply *reply)
{
    for (int i = 0; i < c->nids; i++)
        if (!claimed(reply, c->ids[i]))
            check_deleted(c->rc, c->stream, c->ids[i]);
}

static void claim_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct stream_call *c = priv;
    c->rc->busy--;
    if (reply && reply->type == REDIS_REPLY_ARRAY && !c->rc->d->draining) {
        for (size_t i = 0; i < reply->elements; i++)
            take_claimed(c, reply->element[i]);
        check_unclaimed(c, reply);
    } else if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements)
        log_info("shutdown: %zu claimed entr(ies) left pending for another daemon",
                 reply->elements);
    stream_call_free(c);
}

static void send_claim(struct reclaim *rc, const char *stream, const char **ids, int n,
                       int deliveries)
{
    if (n == 0)
        return;
    const char **argv = calloc((size_t)n + 5, sizeof(*argv));
    char idle[24];
    if (!argv)
        return;
    snprintf(idle, sizeof(idle), "%" PRId64, rc->d->cfg.visibility_timeout_ms);
    argv[0] = "XCLAIM";
    argv[1] = stream;
    argv[2] = GROUP;
    argv[3] = rc->d->worker_id;
    argv[4] = idle;
    for (int i = 0; i < n; i++)
        argv[5 + i] = ids[i];
    send_stream_call(rc, stream, ids, n, deliveries, claim_reply, n + 5, argv);
    free(argv);
}

static void pending_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct stream_call *p = priv;
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
    stream_call_free(p);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct reclaim *rc = arg;
    struct daemon *d = rc->d;
    if (rc->busy || !redis_ready(d->redis, REDIS_CMD))
        return;
    /* Refresh entries we have held for a third of the timeout. */
    runner_foreach_stream_job(d->runner, d->cfg.visibility_timeout_ms / 3, refresh_one, rc);
    if (d->draining || mono_ms() - rc->ready_at < CLAIM_GRACE_MS)
        return;
    /* The same room intake reads by: free slots, and the byte budget. */
    int room = intake_room(d->intake);
    if (room <= 0)
        return;
    if (room > MAX_CLAIM)
        room = MAX_CLAIM;
    char idle[24], count[16];
    snprintf(idle, sizeof(idle), "%" PRId64, d->cfg.visibility_timeout_ms);
    snprintf(count, sizeof(count), "%d", room);
    for (int s = 0; s < d->cfg.nstreams; s++) {
        if (!intake_stream_readable(d->intake, s))
            continue;   /* said by intake; XPENDING would fail on it every tick */
        const char *argv[] = {"XPENDING", d->cfg.streams[s], GROUP, "IDLE", idle, "-", "+", count};
        send_stream_call(rc, d->cfg.streams[s], NULL, 0, 0, pending_reply, 8, argv);
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
    rc->timer = timer_new_periodic(d->base, every, tick, rc);
    return rc;
}

void reclaim_redis_ready(struct reclaim *rc)
{
    rc->ready_at = mono_ms();
    /* Every entry held, however recently taken: Redis may have counted the
     * time it was away as idle time. */
    runner_foreach_stream_job(rc->d->runner, 0, refresh_one, rc);
}

void reclaim_free(struct reclaim *rc)
{
    if (!rc)
        return;
    event_free(rc->timer);
    free(rc);
}
