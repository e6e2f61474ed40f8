/* scheduler.c - the NS:scheduled mover (see scheduler.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "daemon.h"
#include "job.h"
#include "log.h"
#include "redis.h"
#include "scheduler.h"
#include "timer.h"

#define TICK_MS 100
#define MOVE_BATCH "500"

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

struct scheduler {
    struct daemon *d;
    struct event *timer;
    bool busy;
    bool failing;               /* the last move was refused */
    uint64_t moved;
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

struct scheduler *scheduler_create(struct daemon *d)
{
    struct scheduler *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->d = d;
    s->timer = timer_new_periodic(d->base, TICK_MS, tick, s);
    return s;
}

void scheduler_free(struct scheduler *s)
{
    if (!s)
        return;
    event_free(s->timer);
    free(s);
}

uint64_t scheduler_moved(const struct scheduler *s)
{
    return s->moved;
}
