/* scheduler.c - the NS:scheduled mover (see scheduler.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "job.h"
#include "log.h"
#include "redis.h"
#include "scheduler.h"
#include "timer.h"

#define TICK_MS 100
#define MOVE_BATCH "500"
/* The sweep for cancelled jobs: members looked at per call (each call holds
 * Redis for one page, not for the whole set), the pause after the first
 * cancel heard (a burst of cancels makes one pass), and the wait before
 * trying again when the command connection is down. */
#define SWEEP_PAGE "200"
#define SWEEP_DELAY_MS 100
#define SWEEP_RETRY_MS 1000

/* KEYS[1] NS:scheduled, KEYS[2] NS:dead; ARGV[1] now (ms), ARGV[2] batch.
 * Members are JSON written by result.c with every value a string. A member
 * that cannot be read, or whose stream refuses it (a key of another type),
 * goes to NS:dead instead of blocking the set: a script error does not undo
 * the ZREM before it, so the XADD must not fail the script. */
static const char mover_script[] =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, "
    "tonumber(ARGV[2]))\n"
    "for _, m in ipairs(due) do\n"
    "  redis.call('ZREM', KEYS[1], m)\n"
    "  local ok, w = pcall(cjson.decode, m)\n"
    "  if ok and type(w) == 'table' and type(w.stream) == 'string' and type(w.job) == 'string' "
    "then\n"
    "    local r = redis.pcall('XADD', w.stream, '*', 'job', w.job, 'id', tostring(w.id or ''),\n"
    "      'attempts', tostring(w.attempts or '0'), 'queued_at', tostring(w.queued_at or '0'),\n"
    "      'due', tostring(w.due or '0'))\n"
    "    if type(r) == 'table' and r.err then\n"
    "      redis.call('XADD', KEYS[2], '*', 'job', w.job, 'error', cjson.encode({code = "
    "'internal', message = 'stream ' .. w.stream .. ' refused the job: ' .. r.err}))\n"
    "    end\n"
    "  else\n"
    "    redis.call('XADD', KEYS[2], '*', 'job', m, 'error',\n"
    "      '{\"code\":\"internal\",\"message\":\"unreadable NS:scheduled entry\"}')\n"
    "  end\n"
    "end\n"
    "return #due\n";

/* KEYS[1] NS:scheduled, KEYS[2] NS:cancels; ARGV[1] the ZSCAN cursor,
 * ARGV[2] now (ms), ARGV[3] page size, ARGV[4] SCHEDULER_PULL_AHEAD_MS.
 * One page of the set: each member due later than the pull-ahead whose id
 * is cancelled and not expired is made due now. The id is found with a
 * pattern, not cjson: a member may carry a job of megabytes, and `,"` or
 * `{"` never occurs inside a JSON string (a quote in one is escaped), so a
 * match is the member's own "id" field. A score set with XX adds nothing,
 * so the scan's cursor stays valid. */
static const char sweep_script[] =
    "local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[3])\n"
    "local now = tonumber(ARGV[2])\n"
    "local later = now + tonumber(ARGV[4])\n"
    "local m, pulled = page[2], 0\n"
    "for i = 1, #m, 2 do\n"
    "  if tonumber(m[i + 1]) > later then\n"
    "    local id = string.match(m[i], '[{,]\"id\":\"([^\"]*)\"')\n"
    "    local expires = id and redis.call('ZSCORE', KEYS[2], id)\n"
    "    if expires and tonumber(expires) > now then\n"
    "      redis.call('ZADD', KEYS[1], 'XX', now, m[i])\n"
    "      pulled = pulled + 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {page[1], pulled}\n";

struct scheduler {
    struct daemon *d;
    struct event *timer;
    bool busy;
    bool failing;               /* the last move was refused */
    uint64_t moved;
    /* The sweep for cancelled jobs (scheduler.h). */
    struct event *sweep_timer;
    bool sweep_wanted;          /* a cancel came since the running pass began */
    bool sweeping;              /* a page is asked for */
    bool sweep_failing;         /* the last page was refused */
    char cursor[32];
    uint64_t pass_pulled;       /* jobs pulled forward by the running pass */
    uint64_t pulled;
};

static void moved_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct scheduler *s = priv;
    s->busy = false;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Tried every TICK_MS: a lasting refusal (an ACL without EVAL, say)
         * is logged once at error level, not ten times a second. */
        log_msg(s->failing ? LOG_DEBUG : LOG_ERROR, "moving due jobs from %s:scheduled failed: %s",
                s->d->cfg.ns, reply->str);
        s->failing = true;
        return;
    }
    if (s->failing) {
        s->failing = false;
        log_notice("moving due jobs from %s:scheduled works again", s->d->cfg.ns);
    }
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        s->moved += (uint64_t)reply->integer;
        log_debug("moved %lld due job(s) back to their streams", reply->integer);
    }
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct scheduler *s = arg;
    if (s->busy || !redis_ready(s->d->redis, REDIS_CMD))
        return;
    char sched[128], dead[128], now[24];
    snprintf(sched, sizeof(sched), "%s:scheduled", s->d->cfg.ns);
    snprintf(dead, sizeof(dead), "%s:dead", s->d->cfg.ns);
    snprintf(now, sizeof(now), "%" PRId64, now_ms());
    const char *argv[] = {"EVAL", mover_script, "2", sched, dead, now, MOVE_BATCH};
    if (redis_send(s->d->redis, REDIS_CMD, moved_reply, s, 0, 7, argv, NULL) == 0)
        s->busy = true;
}

static void sweep_page(struct scheduler *s);

static void sweep_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct scheduler *s = priv;
    s->sweeping = false;
    if (!reply) {
        /* The connection went: the pass starts again once it is back. */
        s->sweep_wanted = true;
        timer_add_ms(s->sweep_timer, SWEEP_RETRY_MS);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
        /* An ACL without EVAL, or a key of another type: asked again at
         * the next cancel, logged at error level once until it works. */
        log_msg(s->sweep_failing ? LOG_DEBUG : LOG_ERROR,
                "looking for cancelled jobs in %s:scheduled failed: %s", s->d->cfg.ns,
                reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        s->sweep_failing = true;
        return;
    }
    if (s->sweep_failing) {
        s->sweep_failing = false;
        log_notice("looking for cancelled jobs in %s:scheduled works again", s->d->cfg.ns);
    }
    s->pass_pulled += (uint64_t)reply->element[1]->integer;
    snprintf(s->cursor, sizeof(s->cursor), "%s", reply->element[0]->str);
    if (strcmp(s->cursor, "0") != 0) {
        sweep_page(s);
        return;
    }
    if (s->pass_pulled)
        log_info("%" PRIu64 " cancelled job(s) in %s:scheduled made due now, to end cancelled",
                 s->pass_pulled, s->d->cfg.ns);
    s->pulled += s->pass_pulled;
    if (s->sweep_wanted)
        timer_add_ms(s->sweep_timer, SWEEP_DELAY_MS);
}

static void sweep_page(struct scheduler *s)
{
    char sched[128], cancels[128], now[24], ahead[24];
    snprintf(sched, sizeof(sched), "%s:scheduled", s->d->cfg.ns);
    snprintf(cancels, sizeof(cancels), "%s:cancels", s->d->cfg.ns);
    snprintf(now, sizeof(now), "%" PRId64, now_ms());
    snprintf(ahead, sizeof(ahead), "%d", SCHEDULER_PULL_AHEAD_MS);
    const char *argv[] = {"EVAL", sweep_script, "2", sched, cancels, s->cursor, now, SWEEP_PAGE,
                          ahead};
    if (redis_send(s->d->redis, REDIS_CMD, sweep_reply, s, 0, 9, argv, NULL) == 0) {
        s->sweeping = true;
        return;
    }
    s->sweep_wanted = true;
    timer_add_ms(s->sweep_timer, SWEEP_RETRY_MS);
}

static void sweep_start(evutil_socket_t fd, short what, void *arg)
{
    struct scheduler *s = arg;
    if (s->sweeping)
        return;     /* sweep_reply() starts the next pass */
    s->sweep_wanted = false;
    s->pass_pulled = 0;
    snprintf(s->cursor, sizeof(s->cursor), "0");
    sweep_page(s);
}

void scheduler_sweep_cancelled(struct scheduler *s)
{
    if (!s)
        return;
    s->sweep_wanted = true;
    if (!s->sweeping && !evtimer_pending(s->sweep_timer, NULL))
        timer_add_ms(s->sweep_timer, SWEEP_DELAY_MS);
}

struct scheduler *scheduler_create(struct daemon *d)
{
    struct scheduler *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->d = d;
    s->timer = timer_new_periodic(d->base, TICK_MS, tick, s);
    s->sweep_timer = evtimer_new(d->base, sweep_start, s);
    if (!s->timer || !s->sweep_timer) {
        scheduler_free(s);
        return NULL;
    }
    return s;
}

void scheduler_free(struct scheduler *s)
{
    if (!s)
        return;
    if (s->timer)
        event_free(s->timer);
    if (s->sweep_timer)
        event_free(s->sweep_timer);
    free(s);
}

uint64_t scheduler_moved(const struct scheduler *s)
{
    return s->moved;
}

uint64_t scheduler_pulled(const struct scheduler *s)
{
    return s ? s->pulled : 0;
}
