/* cancels.c - the ids cancelled within the last hour (see cancels.h). */
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

struct cancels {
    struct daemon *d;
    json_t *until;          /* id -> when its cancel expires (ms); insertion order */
    bool store_failing;     /* the last write to NS:cancels was refused */
    bool load_failing;      /* the last read of NS:cancels was refused */
};

struct cancels *cancels_create(struct daemon *d)
{
    struct cancels *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->d = d;
    c->until = json_object();
    if (!c->until) {
        free(c);
        return NULL;
    }
    return c;
}

void cancels_free(struct cancels *c)
{
    if (!c)
        return;
    json_decref(c->until);
    free(c);
}

size_t cancels_count(const struct cancels *c)
{
    return json_object_size(c->until);
}

bool cancels_has(const struct cancels *c, const char *id)
{
    json_t *until = json_object_get(c->until, id);
    return until && json_integer_value(until) > now_ms();
}

static void forget_old(struct cancels *c)
{
    int64_t now = now_ms();
    const char *key;
    json_t *value;
    void *tmp;
    json_object_foreach_safe(c->until, tmp, key, value) {
        if (json_integer_value(value) <= now)
            json_object_del(c->until, key);
    }
    if (json_object_size(c->until) < CANCEL_MEMORY_MAX)
        return;
    /* Still full within the hour (a flood of cancels, maybe for made-up
     * ids): the oldest tenth goes (jansson iterates in insertion order).
     * Forgetting all of them let a flood undo every real cancel. */
    log_warn("control: %d cancels heard within %d s; forgetting the oldest %d",
             CANCEL_MEMORY_MAX, CANCEL_MEMORY_MS / 1000, CANCEL_MEMORY_MAX / 10);
    size_t drop = CANCEL_MEMORY_MAX / 10;
    json_object_foreach_safe(c->until, tmp, key, value) {
        if (!drop--)
            break;
        json_object_del(c->until, key);
    }
}

/* Remember ID until UNTIL (ms). True when it was not remembered before. */
static bool remember(struct cancels *c, const char *id, int64_t until)
{
    json_t *old = json_object_get(c->until, id);
    if (old && json_integer_value(old) > now_ms()) {
        if (until > json_integer_value(old))
            json_integer_set(old, until);
        return false;
    }
    if (json_object_size(c->until) >= CANCEL_MEMORY_MAX)
        forget_old(c);
    json_object_set_new(c->until, id, json_integer(until));
    return true;
}

static void stored_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct cancels *c = priv;
    if (!reply)
        return;     /* connection lost: the memory still holds it */
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

void cancels_heard(struct cancels *c, const char *id)
{
    int64_t until = now_ms() + CANCEL_MEMORY_MS;
    remember(c, id, until);
    char key[160], score[32], expired[32], keep[32];
    snprintf(key, sizeof(key), "%s:cancels", c->d->cfg.ns);
    snprintf(score, sizeof(score), "%lld", (long long)until);
    snprintf(expired, sizeof(expired), "(%lld", (long long)now_ms());
    snprintf(keep, sizeof(keep), "%d", -(CANCEL_MEMORY_MAX + 1));
    /* Expired ids go, and past CANCEL_MEMORY_MAX the ones expiring soonest:
     * both cost nothing when there is nothing to remove. Every daemon that
     * hears the cancel writes it (the same member, so it is kept once). */
    const char *add[] = {"ZADD", key, score, id};
    const char *trim_old[] = {"ZREMRANGEBYSCORE", key, "-inf", expired};
    const char *trim_many[] = {"ZREMRANGEBYRANK", key, "0", keep};
    if (redis_send(c->d->redis, REDIS_CMD, stored_reply, c, 0, 4, add, NULL) == 0) {
        redis_send(c->d->redis, REDIS_CMD, NULL, NULL, 0, 4, trim_old, NULL);
        redis_send(c->d->redis, REDIS_CMD, NULL, NULL, 0, 4, trim_many, NULL);
    } else {
        log_debug("control: cancel for %s kept in memory only (Redis not ready)", id);
    }
}

static void loaded_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct cancels *c = priv;
    if (!reply)
        return;     /* the connection's next ready hook asks again */
    if (reply->type != REDIS_REPLY_ARRAY) {
        log_msg(c->load_failing ? LOG_DEBUG : LOG_ERROR,
                "control: reading %s:cancels failed: %s; only the cancels heard from now on apply",
                c->d->cfg.ns, reply->type == REDIS_REPLY_ERROR ? reply->str : "not an array");
        c->load_failing = true;
        return;
    }
    c->load_failing = false;
    /* [id, score, id, score, ...]. Anyone who can write Redis can write
     * here: an id that could not name a job is skipped, and no cancel is
     * kept longer than an hour from now. */
    int64_t now = now_ms(), latest = now + CANCEL_MEMORY_MS;
    int learned = 0, skipped = 0;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *id = reply->element[i], *score = reply->element[i + 1];
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
        int64_t until = score_ms < (double)latest ? (int64_t)score_ms : latest;
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
}

void cancels_load(struct cancels *c, enum redis_role role)
{
    char key[160], from[32], limit[16];
    snprintf(key, sizeof(key), "%s:cancels", c->d->cfg.ns);
    snprintf(from, sizeof(from), "(%lld", (long long)now_ms());
    snprintf(limit, sizeof(limit), "%d", CANCEL_MEMORY_MAX);
    /* The latest-expiring first, so that a set grown past the limit by
     * hand gives its newest cancels. */
    const char *argv[] = {"ZREVRANGEBYSCORE", key, "+inf", from, "WITHSCORES",
                          "LIMIT", "0", limit};
    redis_send(c->d->redis, role, loaded_reply, c, 0, 8, argv, NULL);
}
