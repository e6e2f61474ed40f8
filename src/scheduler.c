/* scheduler.c - the NS:scheduled mover (see scheduler.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "runner.h"
#include "scheduler.h"
#include "timer.h"

#define TICK_MS 100
#define MOVE_BATCH "500"
/* The sweep for cancelled jobs (scheduler.h). A page asks ZSCAN for
 * sweep_count members, a number fitted after each page so that the members
 * it copies into Lua come to about SWEEP_PAGE_BYTES (a member carries its
 * whole job, up to limits.max_job_bytes): Redis serves no one while a
 * script runs. A pass starts SWEEP_DELAY_MS after the first cancel heard (a
 * burst of cancels makes one pass) and no sooner than SWEEP_INTERVAL_MS
 * after the one before (every pass reads the whole set, and a cancel's
 * memory lasts jobs.cancel_ttl); a pass stopped by Redis (LOADING, BUSY, a lost
 * connection) starts again SWEEP_RETRY_MS later. */
#define SWEEP_PAGE_BYTES (1024 * 1024)
#define SWEEP_COUNT_FIRST 16
#define SWEEP_COUNT_MAX 1000
#define SWEEP_DELAY_MS 100
#define SWEEP_INTERVAL_MS 10000
/* A due member naming a stream this daemon does not read waits this long
 * before it is looked at again (mover_script). */
#define OTHER_STREAM_AGAIN_MS 5000
#define OTHER_STREAM_AGAIN_TEXT "5000"
#define SWEEP_RETRY_MS 1000

/* KEYS[1] NS:scheduled, KEYS[2] NS:dead, KEYS[3..] intake.streams; ARGV[1]
 * now (ms), ARGV[2] batch, ARGV[3] how long (ms) a member for another stream
 * waits before it is looked at again. Members are JSON written by result.c
 * with every value a string. A member goes only to a stream this daemon
 * reads: anyone who may write NS:scheduled would otherwise have jobd XADD to
 * any key (another application's stream, past an ACL meant for the
 * namespace). The streams are KEYS so that ACL key checks and Cluster see
 * them. A member naming another stream is put back, due ARGV[3] later, for
 * a daemon that reads it (during a rollout that adds a stream, older daemons
 * must not dead-letter its retries). A member that cannot be read, or
 * whose stream refuses it (a key of another type), goes to NS:dead instead
 * of blocking the set: a script error does not undo the ZREM before it, so
 * the XADD must not fail the script. Returns {members taken, of them
 * dead-lettered, of them put back, and of the dead-lettered ones those
 * whose stream refused them: {job, id, attempts, queued_at, why} each}. The
 * last are valid jobs that end there, so jobd writes each one's record too
 * (refused_jobs()); an unreadable member has nothing to write one for. */
static const char mover_script[] =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, "
    "tonumber(ARGV[2]))\n"
    "local ours, dead, deferred, refused = {}, 0, 0, {}\n"
    "for i = 3, #KEYS do ours[KEYS[i]] = true end\n"
    "local function bury(job, code, message)\n"
    "  redis.call('XADD', KEYS[2], '*', 'job', job, 'error',\n"
    "    cjson.encode({code = code, message = message}))\n"
    "  dead = dead + 1\n"
    "end\n"
    "for _, m in ipairs(due) do\n"
    "  redis.call('ZREM', KEYS[1], m)\n"
    "  local ok, w = pcall(cjson.decode, m)\n"
    "  if not (ok and type(w) == 'table' and type(w.stream) == 'string' and "
    "type(w.job) == 'string') then\n"
    "    bury(m, 'internal', 'unreadable NS:scheduled entry')\n"
    "  elseif not ours[w.stream] then\n"
    "    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), m)\n"
    "    deferred = deferred + 1\n"
    "  else\n"
    "    local entry = {w.stream, '*', 'job', w.job, 'id', tostring(w.id or ''),\n"
    "      'attempts', tostring(w.attempts or '0'), 'queued_at', tostring(w.queued_at or '0'),\n"
    "      'due', tostring(w.due or '0')}\n"
    "    if w.early_due then\n"
    "      entry[#entry + 1] = 'early_due'\n"
    "      entry[#entry + 1] = tostring(w.early_due)\n"
    "    end\n"
    "    local r = redis.pcall('XADD', unpack(entry))\n"
    "    if type(r) == 'table' and r.err then\n"
    "      local why = 'stream ' .. w.stream .. ' refused the job: ' .. r.err\n"
    "      bury(w.job, 'internal', why)\n"
    "      refused[#refused + 1] = {w.job, tostring(w.id or ''), tostring(w.attempts or '0'),\n"
    "        tostring(w.queued_at or '0'), why}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {#due, dead, deferred, refused}\n";

/* KEYS[1] NS:scheduled, KEYS[2] NS:cancels; ARGV[1] the ZSCAN cursor,
 * ARGV[2] now (ms), ARGV[3] the page's COUNT. Each member not yet due whose
 * id is cancelled (in NS:cancels, not expired) is made due now, with
 * "early_due" (its time) added for the mover to pass on. Returns {cursor,
 * members made due, bytes looked at, the largest member's bytes}.
 * - The id: result.c writes it first; a member written before that has it
 *   after the job, found with a plain search (no pattern tried at each of a
 *   megabyte's positions): `","id":"` occurs nowhere else, since inside a
 *   JSON string every quote is escaped.
 * - A member that has "early_due" already keeps it: another daemon made it
 *   due, and its clock may be behind, so the member looks not due yet here;
 *   a second "early_due" would carry that daemon's now, not the job's time.
 * - A time past 2^53 ms (the year 2255, +inf from a producer) is left: %d
 *   would turn it into a negative, and such a job does not come due anyway.
 * - A member added during the scan is due now, so it is not looked at
 *   again. */
static const char sweep_script[] =
    "local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[3])\n"
    "local now = tonumber(ARGV[2])\n"
    "local m, pulled, bytes, largest = page[2], 0, 0, 0\n"
    "for i = 1, #m, 2 do\n"
    "  local member, due = m[i], tonumber(m[i + 1])\n"
    "  bytes = bytes + #member\n"
    "  if #member > largest then largest = #member end\n"
    "  if due > now and due < 9e15 and string.sub(member, -1) == '}' and\n"
    "     not string.find(string.sub(member, -48), ',\"early_due\":\"', 1, true) then\n"
    "    local id = string.match(member, '^{\"id\":\"([%w%.:_%-]+)\"')\n"
    "    if not id then\n"
    "      local at = string.find(member, '\",\"id\":\"', 1, true)\n"
    "      id = at and string.match(member, '^([%w%.:_%-]+)\"', at + 8)\n"
    "    end\n"
    "    local expires = id and redis.call('ZSCORE', KEYS[2], id)\n"
    "    if expires and tonumber(expires) > now then\n"
    "      redis.call('ZREM', KEYS[1], member)\n"
    "      redis.call('ZADD', KEYS[1], now, string.sub(member, 1, -2) ..\n"
    "        string.format(',\"early_due\":\"%d\"}', due))\n"
    "      pulled = pulled + 1\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return {page[1], pulled, bytes, largest}\n";

struct scheduler {
    struct daemon *d;
    struct event *timer;
    bool busy;
    bool failing;               /* the last move was refused */
    uint64_t moved;
    /* The sweep for cancelled jobs (scheduler.h). */
    struct event *sweep_timer;
    bool sweep_wanted;          /* a cancel came since the running pass began */
    bool sweeping;              /* a pass is under way: a page is asked for */
    bool sweep_failing;         /* the last page was refused */
    char cursor[32];            /* of the pass under way */
    long sweep_count;           /* COUNT for the next page */
    long long largest;          /* the largest member the pass has seen */
    int64_t pass_started;       /* mono_ms() */
    uint64_t pass_pulled;       /* jobs made due by the pass under way */
    uint64_t pulled;
};

/* The jobs the mover dead-lettered because their stream refused them
 * (mover_script's fourth element): each ends failed (internal) through the
 * runner, with the record, event and count every ended job has; only the
 * dead letter is written already. Before, they had a dead letter and no
 * record, so a producer waiting for one waited for ever. */
static void refused_jobs(struct scheduler *s, const redisReply *list)
{
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 5)
            continue;
        bool strings = true;
        for (size_t k = 0; k < 5; k++)
            strings = strings && e->element[k]->type == REDIS_REPLY_STRING;
        if (!strings)
            continue;
        struct job_message msg = {
            .raw = e->element[0]->str,
            .raw_len = e->element[0]->len,
            .source = SOURCE_PUBSUB,    /* no entry of its own to acknowledge */
            .id = e->element[1]->str,
            .attempts = atoi(e->element[2]->str),
            .queued_at = strtoll(e->element[3]->str, NULL, 10),
            .unrun = e->element[4]->str,
        };
        runner_accept(s->d->runner, &msg);
    }
}

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
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_INTEGER ||
        reply->element[2]->type != REDIS_REPLY_INTEGER ||
        reply->element[3]->type != REDIS_REPLY_ARRAY) {
        log_error("moving due jobs from %s:scheduled: unexpected reply", s->d->cfg.ns);
        return;
    }
    long long taken = reply->element[0]->integer, dead = reply->element[1]->integer,
              deferred = reply->element[2]->integer;
    if (taken > dead + deferred) {
        s->moved += (uint64_t)(taken - dead - deferred);
        log_debug("moved %lld due job(s) back to their streams", taken - dead - deferred);
    }
    /* Once a second at most: such a member comes back every few seconds. */
    static struct log_limit said = LOG_LIMIT("scheduler: members for other streams", 1);
    if (deferred > 0 && log_limit_allow(&said))
        log_warn("%lld due member(s) of %s:scheduled name a stream not in this daemon's "
                 "intake.streams; left there for a daemon that reads it (looked at again in "
                 "%d s)", deferred, s->d->cfg.ns, OTHER_STREAM_AGAIN_MS / 1000);
    if (dead > 0) {
        metrics_dead_letters((uint64_t)dead);
        log_warn("%lld member(s) of %s:scheduled dead-lettered instead of moved (see %s:dead)",
                 dead, s->d->cfg.ns, s->d->cfg.ns);
    }
    refused_jobs(s, reply->element[3]);
}

/* The mover's arguments: EVAL, the script, NKEYS, NS:scheduled, NS:dead,
 * every configured stream, then NOW, the batch and OTHER_STREAM_AGAIN_MS.
 * The caller frees the array (not the strings). */
static const char **mover_argv(const struct config *cfg, const char *nkeys, const char *sched,
                               const char *dead, const char *now, int *argc)
{
    const char **argv = calloc((size_t)cfg->nstreams + 8, sizeof(*argv));
    if (!argv)
        return NULL;
    int i = 0;
    argv[i++] = "EVAL";
    argv[i++] = mover_script;
    argv[i++] = nkeys;
    argv[i++] = sched;
    argv[i++] = dead;
    for (int k = 0; k < cfg->nstreams; k++)
        argv[i++] = cfg->streams[k];
    argv[i++] = now;
    argv[i++] = MOVE_BATCH;
    argv[i++] = OTHER_STREAM_AGAIN_TEXT;
    *argc = i;
    return argv;
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    struct scheduler *s = arg;
    if (s->busy || !redis_ready(s->d->redis, REDIS_CMD))
        return;
    char sched[128], dead[128], now[24], nkeys[16];
    snprintf(sched, sizeof(sched), "%s:scheduled", s->d->cfg.ns);
    snprintf(dead, sizeof(dead), "%s:dead", s->d->cfg.ns);
    snprintf(now, sizeof(now), "%" PRId64, now_ms());
    snprintf(nkeys, sizeof(nkeys), "%d", s->d->cfg.nstreams + 2);
    int argc;
    const char **argv = mover_argv(&s->d->cfg, nkeys, sched, dead, now, &argc);
    if (!argv)
        return;     /* out of memory: the next tick tries again */
    if (redis_send(s->d->redis, REDIS_CMD, moved_reply, s, 0, argc, argv, NULL) == 0)
        s->busy = true;
    free(argv);
}

static void sweep_page(struct scheduler *s);

static void log_pass(struct scheduler *s)
{
    if (s->pass_pulled)
        log_info("%" PRIu64 " cancelled job(s) in %s:scheduled made due now, to end cancelled",
                 s->pass_pulled, s->d->cfg.ns);
    s->pass_pulled = 0;
}

/* The pass under way stopped short (Redis busy, restarted or gone): a new
 * one later, from the start, since a cursor does not survive a restart. */
static void sweep_later(struct scheduler *s)
{
    log_pass(s);
    s->sweeping = false;
    s->sweep_wanted = true;
    timer_add_ms(s->sweep_timer, SWEEP_RETRY_MS);
}

/* When the next pass may start: SWEEP_DELAY_MS from now, and no sooner
 * than SWEEP_INTERVAL_MS after the last one began. */
static int64_t next_pass_in(const struct scheduler *s)
{
    int64_t since = mono_ms() - s->pass_started;
    return s->pass_started && since + SWEEP_DELAY_MS < SWEEP_INTERVAL_MS
               ? SWEEP_INTERVAL_MS - since
               : SWEEP_DELAY_MS;
}

static void sweep_end(struct scheduler *s)
{
    s->sweeping = false;
    log_pass(s);
    if (s->sweep_wanted)
        timer_add_ms(s->sweep_timer, next_pass_in(s));
}

/* COUNT for the next page: what fits SWEEP_PAGE_BYTES at the last page's
 * mean member size, at most twice the last COUNT (a page of small members
 * says little about the next), and no more of the largest member seen in
 * the pass than fit. */
static long next_count(long count, long long bytes, long long largest)
{
    double fitted = bytes > 0 ? (double)count * SWEEP_PAGE_BYTES / (double)bytes
                              : (double)count * 2;
    if (fitted > (double)count * 2)
        fitted = (double)count * 2;
    if (largest > 0 && fitted > (double)SWEEP_PAGE_BYTES / (double)largest)
        fitted = (double)SWEEP_PAGE_BYTES / (double)largest;
    return fitted < 1 ? 1 : fitted > SWEEP_COUNT_MAX ? SWEEP_COUNT_MAX : (long)fitted;
}

static void sweep_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct scheduler *s = priv;
    if (!reply) {
        sweep_later(s);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Logged at error level once until a page works again. About a key
         * (NS:cancels of another type, an ACL): the pass ends, and the next
         * cancel tries again. About Redis (LOADING, BUSY): again later. */
        log_msg(s->sweep_failing ? LOG_DEBUG : LOG_ERROR,
                "looking for cancelled jobs in %s:scheduled failed: %s", s->d->cfg.ns,
                reply->str);
        s->sweep_failing = true;
        if (redis_key_error(reply->str))
            sweep_end(s);
        else
            sweep_later(s);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_INTEGER ||
        reply->element[2]->type != REDIS_REPLY_INTEGER ||
        reply->element[3]->type != REDIS_REPLY_INTEGER) {
        log_error("looking for cancelled jobs in %s:scheduled: unexpected reply", s->d->cfg.ns);
        sweep_end(s);
        return;
    }
    if (s->sweep_failing) {
        s->sweep_failing = false;
        log_notice("looking for cancelled jobs in %s:scheduled works again", s->d->cfg.ns);
    }
    long long pulled = reply->element[1]->integer, bytes = reply->element[2]->integer;
    s->pass_pulled += (uint64_t)pulled;
    s->pulled += (uint64_t)pulled;
    if (reply->element[3]->integer > s->largest)
        s->largest = reply->element[3]->integer;
    s->sweep_count = next_count(s->sweep_count, bytes, s->largest);
    snprintf(s->cursor, sizeof(s->cursor), "%s", reply->element[0]->str);
    if (strcmp(s->cursor, "0") != 0)
        sweep_page(s);
    else
        sweep_end(s);
}

static void sweep_page(struct scheduler *s)
{
    char sched[128], cancels[128], now[24], count[24];
    snprintf(sched, sizeof(sched), "%s:scheduled", s->d->cfg.ns);
    snprintf(cancels, sizeof(cancels), "%s:cancels", s->d->cfg.ns);
    snprintf(now, sizeof(now), "%" PRId64, now_ms());
    snprintf(count, sizeof(count), "%ld", s->sweep_count);
    const char *argv[] = {"EVAL", sweep_script, "2", sched, cancels, s->cursor, now, count};
    if (redis_send(s->d->redis, REDIS_CMD, sweep_reply, s, 0, 8, argv, NULL) != 0)
        sweep_later(s);     /* the command connection is down */
}

/* The sweep's timer: a new pass, from the start of the set. */
static void sweep_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct scheduler *s = arg;
    s->sweeping = true;
    s->sweep_wanted = false;
    s->pass_started = mono_ms();
    s->pass_pulled = 0;
    s->sweep_count = SWEEP_COUNT_FIRST;
    s->largest = 0;
    snprintf(s->cursor, sizeof(s->cursor), "0");
    sweep_page(s);
}

void scheduler_sweep_cancelled(struct scheduler *s)
{
    if (!s)
        return;
    s->sweep_wanted = true;
    if (!s->sweeping && !evtimer_pending(s->sweep_timer, NULL))
        timer_add_ms(s->sweep_timer, next_pass_in(s));
}

struct scheduler *scheduler_create(struct daemon *d)
{
    struct scheduler *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->d = d;
    s->timer = timer_new_periodic(d->base, TICK_MS, tick, s);
    s->sweep_timer = evtimer_new(d->base, sweep_timer_cb, s);
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
