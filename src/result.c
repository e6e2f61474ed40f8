/* result.c - outcome writes (see result.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "executor.h"
#include "intake.h"
#include "jsonw.h"
#include "list.h"
#include "log.h"
#include "queued_replies.h"
#include "redis.h"
#include "result.h"
#include "runner.h"
#include "timer.h"

#define GROUP "jobd"

void result_key(const struct daemon *d, char *buf, size_t len, const char *suffix)
{
    snprintf(buf, len, "%s:%s", d->cfg.ns, suffix);
}

void result_record_key(const struct daemon *d, const char *id, char buf[RESULT_KEY_SIZE])
{
    snprintf(buf, RESULT_KEY_SIZE, "%s:result:%s", d->cfg.ns, id);
}

/* Length of the UTF-8 sequence at S as jansson accepts it (no overlong
 * forms, surrogates or code points past U+10FFFF), 0 when it is not one. */
static size_t utf8_sequence(const unsigned char *s)
{
    unsigned c = s[0], cp, min;
    size_t n;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        n = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        n = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)      /* also stops at the terminating NUL */
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

json_t *result_error_json(const struct job_error *err)
{
    /* A message may not be valid UTF-8: "%.64s" or the 512-byte buffer can
     * cut a character in two, and jansson's own parse errors quote the raw
     * bytes near the error. json_pack() refuses such a string, which left
     * the record without its "error" (PROTOCOL §4) and the dead letter with
     * an empty one (found by fuzz/fuzz_envelope.c). Each byte that does not
     * start a valid sequence becomes '?'. */
    char message[sizeof(err->message)];
    snprintf(message, sizeof(message), "%s", err->message);
    for (unsigned char *p = (unsigned char *)message; *p;) {
        size_t n = utf8_sequence(p);
        if (n == 0)
            *p++ = '?';
        else
            p += n;
    }
    json_t *e = json_pack("{s:s, s:s}", "code", err->code ? err->code : ERR_INTERNAL, "message",
                          message);
    if (err->http_status)
        json_object_set_new(e, "http_status", json_integer(err->http_status));
    if (err->sqlstate[0])
        json_object_set_new(e, "sqlstate", json_string(err->sqlstate));
    return e;
}

/* The type as counted and reported: a producer's unknown type string is not
 * echoed into NS:stats, where it would grow one field per invented name. */
static const char *reported_type(const struct job *job)
{
    return job->exec ? job->exec->type : "unknown";
}

bool result_goes_to_dead(const struct job *job)
{
    return (job->status == JOB_REJECTED || job->status == JOB_FAILED ||
            job->status == JOB_TIMED_OUT) && !job->dead_written;
}

/* The record as PROTOCOL §4 spells it, written straight as text: building a
 * jansson object per outcome only to dump it was a fifth of jobd's CPU on
 * sql jobs. Into B, which may only measure it (result_record_size()). */
static void write_record(struct jbuf *b, const struct daemon *d, const struct job *job)
{
    const char *type = reported_type(job), *status = job_status_name(job->status);
    jbuf_lit(b, "{\"id\":");
    if (job->id[0])
        jbuf_string(b, job->id, strlen(job->id));
    else
        jbuf_lit(b, "null");
    jbuf_lit(b, ",\"type\":");
    jbuf_string(b, type, strlen(type));
    jbuf_lit(b, ",\"status\":");
    jbuf_string(b, status, strlen(status));
    jbuf_lit(b, ",\"attempts\":");
    jbuf_int(b, job->attempts);
    jbuf_lit(b, ",\"worker\":");
    jbuf_string(b, d->worker_id, strlen(d->worker_id));
    jbuf_lit(b, ",\"queued_at\":");
    jbuf_int(b, job->queued_at);
    jbuf_lit(b, ",\"started_at\":");
    jbuf_int(b, job->started_at);
    jbuf_lit(b, ",\"finished_at\":");
    jbuf_int(b, job->finished_at);
    if (job->status == JOB_SUCCEEDED) {
        jbuf_lit(b, ",\"result\":");
        if (job->result)
            jbuf_value(b, job->result);
        else
            jbuf_lit(b, "{}");
    } else {
        json_t *err = result_error_json(&job->error);
        if (err && job->error_results)
            json_object_set(err, "results", job->error_results);
        jbuf_lit(b, ",\"error\":");
        if (err)
            jbuf_value(b, err);
        else
            b->failed = true;
        json_decref(err);
    }
    jbuf_lit(b, "}");
}

static char *record_text(const struct daemon *d, const struct job *job, size_t *len)
{
    struct jbuf b = {0};
    write_record(&b, d, job);
    return jbuf_take(&b, len);
}

size_t result_record_size(const struct daemon *d, const struct job *job)
{
    struct jbuf b = {.measure = true};
    write_record(&b, d, job);
    return b.failed ? 0 : b.len;
}

json_t *result_record(const struct daemon *d, const struct job *job)
{
    size_t len;
    char *text = record_text(d, job, &len);
    /* JSON_ALLOW_NUL: an http child's "json" may hold \u0000, as its loader
     * allowed. What still does not read back (nesting past jansson's depth
     * limit once inside the record) is the caller's to report. */
    json_t *rec = text ? json_loadb(text, len, JSON_ALLOW_NUL, NULL) : NULL;
    free(text);
    return rec;
}

/* Outcomes finished in one loop pass are written in one transaction: one
 * MULTI/EXEC, one XACK per stream and one HINCRBY per stats field for all of
 * them, instead of six commands a job (bench/run: writing outcomes was half
 * of jobd's CPU on trivial jobs, and Redis's as much again). */
#define BATCH_MAX 1000

struct pending {
    struct job *job;
    result_done_fn *done;
    int first_cmd, ncmds;       /* its commands' places in the EXEC reply */
    int events_cmd;             /* its PUBLISH on NS:events among them, or -1 */
    char *put_back_stream;      /* a put-back's stream, as written (else NULL) */
    bool key_wrong;             /* checked after a lost reply: its key is of another type */
    /* Its result record as stored, kept for its reply_to until the EXEC
     * reply (publish_replies()); NULL without reply_to, or once a lost
     * reply leaves the transaction unsettled. */
    char *reply_text;
    size_t reply_len;
};

struct txn {
    struct daemon *d;
    struct list_link link;      /* on unsettled while its fate is unknown */
    uint64_t marker;            /* the NS:txn key it sets (0: no job in it) */
    uint64_t *spent;            /* the markers it deletes (spent_markers, taken) */
    int nspent;
    bool ran;                   /* known to have run: its deletions done */
    bool checking;              /* its check is on the wire */
    uint64_t id;                /* numbers its queued commands' replies (queued_replies.h) */
    int stats_first, xacks_first;   /* the places of its HINCRBYs and XACKs; markers before */
    int n;
    struct pending items[];
};

static struct {
    struct event *flush;
    struct pending *items;
    int n, cap;
} batch;

static int queued_in_txn;      /* commands queued since the MULTI: the next one's place */
static uint64_t txn_seq;        /* the id of the transaction being queued */

static void queued_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    const redisReply *r = reply;
    queued_reply_note((uint64_t)(uintptr_t)priv,
                      r && r->type == REDIS_REPLY_ERROR ? r->str : NULL);
}

/* A command of the transaction being built could not be sent (out of
 * memory): see flush_batch(). */
static bool txn_broken;

static void queue_command(struct daemon *d, int argc, const char **argv, const size_t *lens)
{
    /* Counted only when sent: the EXEC reply has an element for each, and
     * each reply to its queueing is noted in the same order. */
    if (redis_send_queued(d->redis, REDIS_CMD, queued_reply, (void *)(uintptr_t)txn_seq, argc,
                          argv, lens) == 0)
        queued_in_txn++;
    else
        txn_broken = true;
}

/* Shared writes Redis refused as they were queued (an ACL user without
 * NS:events or HINCRBY): left out of every transaction since, instead of
 * aborting each one (see retry_without_refused()). Until a reload asks
 * again (result_reload()), or jobd restarts. */
static struct {
    bool events, stats;
} part_refused;

/* Where JOB goes back (put back, or due again after a retry's wait): its own
 * stream while it can be read, else the first that can (intake.c). */
static const char *requeue_stream(struct daemon *d, const struct job *job)
{
    return intake_home_stream(d->intake, job->source == SOURCE_STREAM ? job->stream : NULL);
}

/* Redis refused P's write with ERR, as its transaction ran or was queued.
 * A put-back's stream gets no more of them when the refusal is about the
 * key (intake_write_refused()), and the job is written to another; one about
 * the command (an ACL without XADD) is written again until an operator
 * allows it, or the drain gives up. One stream refuses every XADD for good:
 * one whose ids are used up ("ERR The stream has exhausted the last possible
 * ID", after a producer's XADD with the largest id), which no ACL or type
 * repair ends while the drain runs. The job, whose entry was acknowledged
 * beside the refused XADD, was kept until the drain gave up on it, and lost.
 * It ends instead, failed (internal), with its record and a dead letter that
 * keeps its envelope, to be replayed once the stream is replaced. */
static void note_put_back_refused(struct daemon *d, const struct pending *p, const char *err)
{
    struct job *job = p->job;
    if (job->write_kind != WRITE_REQUEUE)
        return;
    const char *refused_by = p->put_back_stream ? p->put_back_stream : requeue_stream(d, job);
    intake_write_refused(d->intake, refused_by, err);
    if (!redis_stream_full(err))
        return;
    job->write_kind = WRITE_RESULT;
    job->status = JOB_FAILED;
    job_error_set(&job->error, ERR_INTERNAL,
                  "stream %s refused to take the job back: %s; its envelope is in the dead letters",
                  refused_by, err);
    job->finished_at = now_ms();
    if (!job->started_at)
        job->started_at = job->finished_at;
    log_job(LOG_ERROR, job, "stream %s takes no more entries (%s); the job ends failed, with "
            "a dead letter", refused_by, err);
}

/* The key a put-back or a retry's schedule went to, for the check after a
 * lost reply (refused_by_key_type()); NULL for other writes. A retry's is
 * always NS:scheduled, written into SCHED; a put-back's stream is kept as it
 * was written, since the stream chosen can change before the check (one
 * whose refusal another transaction reported is no longer chosen). */
static const char *kept_key(const struct daemon *d, const struct pending *p, char sched[128])
{
    if (p->job->write_kind == WRITE_SCHEDULE) {
        result_key(d, sched, 128, "scheduled");
        return sched;
    }
    return p->job->write_kind == WRITE_REQUEUE ? p->put_back_stream : NULL;
}

static const char *write_kind_name(enum job_write kind)
{
    switch (kind) {
    case WRITE_RESULT: return "storing its result record or dead letter";
    case WRITE_SCHEDULE: return "scheduling it (NS:scheduled)";
    case WRITE_REQUEUE: return "putting it back on a stream";
    }
    return "writing its outcome";
}

/* Redis refused a command of P's (ERR). KEPT: its job is kept and written
 * again, every second, so that is said once at error level. */
static void say_refused(const struct pending *p, const char *err, bool kept)
{
    log_job(!kept ? LOG_WARN : p->job->refusal_said ? LOG_DEBUG : LOG_ERROR, p->job,
            "%s failed: %s%s", write_kind_name(p->job->write_kind), err,
            kept ? "; kept here and written again" : "");
    p->job->refusal_said |= kept;
}

/* ---- transactions whose EXEC reply was lost ------------------------------
 *
 * When the command connection goes between sending an EXEC and reading its
 * reply, the transaction may or may not have run. Writing it again when it
 * had would publish its events twice, count its stats twice and put a
 * requeued job on its stream twice; so such a transaction waits, unsettled,
 * until the connection is back and Redis can say whether it ran. A MULTI/EXEC
 * runs whole or not at all, so one trace of it answers for all of it. The
 * XACK of its first stream entry (still pending in the group: it did not
 * run) cannot be that trace: the group is made anew, empty, at id 0 when Redis
 * restarts without its data or the group is destroyed (by another daemon's
 * or this daemon's own stream connection, often before the check is asked),
 * and "not pending" then read as "ran" for an outcome never written; and
 * during a long outage another daemon may reclaim and acknowledge the entry,
 * which also looks like "ran" while a pub/sub job beside it was never
 * stored. So every transaction sets a marker key
 * NS:txn:<worker>:<boot>:<seq>, deleted by a later transaction once its
 * reply has come, and is judged by it: gone with the data, or never set,
 * it says "not stored". */
#define MARKER_TTL "86400"      /* longer than any outage we expect to survive */

static struct list unsettled;
static struct {
    int outcomes;               /* in unsettled transactions */
    uint64_t stored, not_stored;    /* transactions checked, by what Redis said */
} lost;
static uint64_t marker_seq;
static struct {
    uint64_t *seqs;             /* markers whose transaction is known to have run */
    int n, cap;
} spent_markers;

static void marker_key(const struct daemon *d, char *buf, size_t len, uint64_t seq)
{
    static int64_t boot;        /* a pid can come back within MARKER_TTL; the start time not */
    if (!boot)
        boot = now_ms();
    snprintf(buf, len, "%s:txn:%s:%" PRId64 ":%" PRIu64, d->cfg.ns, d->worker_id, boot, seq);
}

static void marker_spent(uint64_t seq)
{
    if (spent_markers.n == spent_markers.cap) {
        int cap = spent_markers.cap ? 2 * spent_markers.cap : 64;
        uint64_t *grown = realloc(spent_markers.seqs, (size_t)cap * sizeof(*grown));
        if (!grown)
            return;     /* the key expires by itself */
        spent_markers.seqs = grown;
        spent_markers.cap = cap;
    }
    spent_markers.seqs[spent_markers.n++] = seq;
}

static void publish_replies(struct daemon *d, const struct txn *t);

/* T's deletions of spent markers are done only if it ran: else (refused,
 * an EXECABORT, its reply lost and the marker not found) those go to the
 * next transaction, or the keys stayed a day. A DEL of a key already gone
 * is harmless, so a fate not known counts as "not run". */
static void txn_free(struct txn *t)
{
    for (int i = 0; i < t->nspent && !t->ran; i++)
        marker_spent(t->spent[i]);
    free(t->spent);
    for (int i = 0; i < t->n; i++) {
        free(t->items[i].put_back_stream);
        free(t->items[i].reply_text);
    }
    free(t);
}

/* T's fate is known: its marker may go, reply_to gets the records it
 * stored, and each job hears whether its outcome was stored (REFUSED: per
 * job, one whose own command Redis refused as the transaction ran; NULL:
 * none). Frees T. */
static void conclude(struct txn *t, bool stored, const bool *refused)
{
    if (stored && t->marker)
        marker_spent(t->marker);
    t->ran = stored;
    if (stored)
        publish_replies(t->d, t);
    for (int i = 0; i < t->n; i++)
        t->items[i].done(t->items[i].job, stored && !(refused && refused[i]));
    txn_free(t);
}

/* A transaction whose lost reply held a refusal (a put-back or a retry's
 * schedule into a key of another type: WRONGTYPE) was judged stored by its
 * marker, and that job dropped while its entry had been acknowledged beside
 * it. So the check also asks each such write's key for its type: one of
 * another type now was refused then, or has lost the write since (the key
 * was replaced); either way the job is kept and written again, as when the
 * refusal is seen on a live connection. NULL: none. */
static bool *refused_by_key_type(struct txn *t)
{
    bool *refused = NULL;
    for (int i = 0; i < t->n; i++) {
        struct pending *p = &t->items[i];
        if (!p->key_wrong || !(refused || (refused = calloc((size_t)t->n, sizeof(*refused)))))
            continue;
        refused[i] = true;
        char sched[128];
        log_job(LOG_ERROR, p->job, "%s failed in a transaction whose reply was lost: %s is a "
                "key of another type; kept here and written again",
                write_kind_name(p->job->write_kind), kept_key(t->d, p, sched));
        note_put_back_refused(t->d, p, "WRONGTYPE (found after a lost reply)");
    }
    return refused;
}

static void settle(struct txn *t, bool ran)
{
    list_remove(&unsettled, &t->link);
    lost.outcomes -= t->n;
    if (ran)
        lost.stored++;
    else
        lost.not_stored++;
    bool *refused = ran ? refused_by_key_type(t) : NULL;
    conclude(t, ran, refused);
    free(refused);
}

#define RECHECK_MS 1000

static struct event *recheck;   /* ask again about transactions Redis could not answer for */

static void recheck_cb(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    if (redis_ready(d->redis, REDIS_CMD))
        result_redis_ready(d);
}

/* An error that says Redis cannot answer yet, not that the answer is "no":
 * a Redis restarted from its AOF says LOADING until its data is back, the
 * transaction's writes among them. Taken as "not stored", the outcomes were
 * written a second time (found by bench/soak: one record counted twice). */
static bool answer_later(const char *err)
{
    static const char *const transient[] = {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN",
                                            "CLUSTERDOWN", "NOAUTH", NULL};
    for (int i = 0; transient[i]; i++)
        if (!strncmp(err, transient[i], strlen(transient[i])))
            return true;
    return false;
}

static void check_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct txn *t = priv;
    t->checking = false;
    if (!reply)
        return;     /* lost again: asked again on the next connection */
    bool ran;
    if (reply->type == REDIS_REPLY_ERROR && answer_later(reply->str)) {
        log_info("checking %d outcome(s) sent before the connection went: %s; asking again "
                 "in %d ms", t->n, reply->str, RECHECK_MS);
        if (!recheck)
            recheck = evtimer_new(t->d->base, recheck_cb, t->d);
        if (recheck && !evtimer_pending(recheck, NULL))
            timer_add_ms(recheck, RECHECK_MS);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* The stream or its group is gone: writing again is the safe way. */
        log_warn("checking %d outcome(s) sent before the connection went: %s; writing them "
                 "again", t->n, reply->str);
        ran = false;
    } else {
        ran = reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;   /* EXISTS */
    }
    log_info("%d outcome(s) sent before the connection went %s", t->n,
             ran ? "were stored then" : "were not stored; writing them again");
    struct daemon *d = t->d;
    settle(t, ran);
    if (!ran)
        runner_redis_ready(d->runner);
}

void result_lost_counts(int *outcomes, uint64_t *stored, uint64_t *not_stored)
{
    *outcomes = lost.outcomes;
    *stored = lost.stored;
    *not_stored = lost.not_stored;
}

/* The type of a kept write's key: "none" (a set emptied by the mover, a
 * stream deleted) or the type written to is fine; any other, refused. */
static void key_type_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct pending *p = priv;
    if (!reply || reply->type != REDIS_REPLY_STATUS)
        return;     /* lost, or Redis cannot say yet: the EXISTS after it says so too */
    const char *want = p->job->write_kind == WRITE_SCHEDULE ? "zset" : "stream";
    p->key_wrong = strcmp(reply->str, "none") && strcmp(reply->str, want);
}

void result_redis_ready(struct daemon *d)
{
    for (struct list_link *l = unsettled.head; l; l = l->next) {
        struct txn *t = list_entry(l, struct txn, link);
        if (t->checking)
            continue;
        /* Sent before the EXISTS, on the same connection: answered first. */
        for (int i = 0; i < t->n; i++) {
            struct pending *p = &t->items[i];
            char sched[128];
            const char *type[] = {"TYPE", kept_key(d, p, sched)};
            p->key_wrong = false;
            if (type[1] && redis_send(d->redis, REDIS_CMD, key_type_reply, p, 0, 2, type, NULL))
                return;
        }
        char key[512];
        marker_key(d, key, sizeof(key), t->marker);
        const char *argv[] = {"EXISTS", key};
        if (redis_send(d->redis, REDIS_CMD, check_reply, t, 0, 2, argv, NULL))
            return;     /* the connection went again */
        t->checking = true;
    }
}

/* Inside a transaction: its own marker, and the deletion of the markers of
 * transactions known to have run. */
static void send_markers(struct daemon *d, struct txn *t)
{
    char key[512];
    if (t->n) {
        t->marker = ++marker_seq;
        marker_key(d, key, sizeof(key), t->marker);
        const char *argv[] = {"SET", key, "1", "EX", MARKER_TTL};
        queue_command(d, 5, argv, NULL);
    }
    if (!spent_markers.n)
        return;
    int argc = 1 + spent_markers.n;
    const char **argv = malloc((size_t)argc * sizeof(*argv));
    char (*keys)[512] = malloc((size_t)spent_markers.n * sizeof(*keys));
    if (argv && keys) {
        argv[0] = "DEL";
        for (int i = 0; i < spent_markers.n; i++) {
            marker_key(d, keys[i], sizeof(keys[i]), spent_markers.seqs[i]);
            argv[1 + i] = keys[i];
        }
        queue_command(d, argc, argv, NULL);
        t->spent = spent_markers.seqs;
        t->nspent = spent_markers.n;
        memset(&spent_markers, 0, sizeof(spent_markers));
    }
    free(argv);
    free(keys);
}

static void reply_published(struct redis *r, redisReply *reply, void *priv)
{
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn("publishing a result record on its reply_to channel failed: %s", reply->str);
}

/* The records of T's results on their reply_to channels, once T has run.
 * Not inside the transaction: reply_to is the producer's channel, and a
 * PUBLISH that Redis refuses when it is queued (an ACL user without that
 * channel: NOPERM) aborts the whole transaction (EXECABORT), so one such job
 * kept every outcome batched with it from being stored, for ever. */
static void publish_replies(struct daemon *d, const struct txn *t)
{
    for (int i = 0; i < t->n; i++) {
        const struct pending *p = &t->items[i];
        const struct job *job = p->job;
        if (job->write_kind != WRITE_RESULT || !job->reply_to)
            continue;
        /* The record's text kept when it was written, or made now. */
        size_t len = p->reply_len;
        char *made = p->reply_text ? NULL : record_text(d, job, &len);
        const char *text = p->reply_text ? p->reply_text : made;
        if (!text)
            continue;
        const char *argv[] = {"PUBLISH", job->reply_to, text};
        const size_t lens[] = {7, strlen(job->reply_to), len};
        redis_send(d->redis, REDIS_CMD, reply_published, NULL, 0, 3, argv, lens);
        free(made);
    }
}

/* A command that fails as the transaction runs does not roll it back
 * (WRONGTYPE: a stream, NS:scheduled or NS:dead replaced by a key of another
 * type). Each failure is said with the job it belongs to. A job put back on
 * its stream or scheduled for a retry whose XADD or ZADD failed was not
 * stored, although its entry was acknowledged in the same transaction:
 * told so, its runner keeps it and writes it again (a second later, on a
 * readable stream) instead of losing it. Its result record or dead letter
 * failing leaves the other stored. Returns per job whether it was refused;
 * NULL when none was (or out of memory: then as before, all stored). */
static bool *refused_commands(const struct txn *t, const redisReply *reply)
{
    bool *refused = NULL;
    size_t jobs_end = 0;
    for (int i = 0; i < t->n; i++) {
        const struct pending *p = &t->items[i];
        if ((size_t)(p->first_cmd + p->ncmds) > jobs_end)
            jobs_end = (size_t)(p->first_cmd + p->ncmds);
        for (int c = p->first_cmd; c < p->first_cmd + p->ncmds && (size_t)c < reply->elements;
             c++) {
            const redisReply *e = reply->element[c];
            if (e->type != REDIS_REPLY_ERROR)
                continue;
            bool kept = p->job->write_kind == WRITE_REQUEUE ||
                        p->job->write_kind == WRITE_SCHEDULE;
            say_refused(p, e->str, kept);
            if (kept && (refused || (refused = calloc((size_t)t->n, sizeof(*refused)))))
                refused[i] = true;
            note_put_back_refused(t->d, p, e->str);
        }
    }
    /* The rest, queued after the jobs' own: markers, stats, acknowledgements. */
    for (size_t c = jobs_end; c < reply->elements; c++)
        if (reply->element[c]->type == REDIS_REPLY_ERROR)
            log_warn("command %zu of a batch of %d outcome(s) failed: %s", c, t->n,
                     reply->element[c]->str);
    return refused;
}

/* An operator who granted the ACL reloads to have it used. Still refused,
 * the next transaction is refused once more (EXECABORT), said again and
 * stored without it in the same loop pass: one round trip a reload. */
void result_reload(void)
{
    if (part_refused.events || part_refused.stats)
        log_notice("reload: outcomes try %s again", part_refused.events && part_refused.stats
                   ? "the PUBLISH on NS:events and the HINCRBY of NS:stats"
                   : part_refused.events ? "the PUBLISH on NS:events" : "the HINCRBY of NS:stats");
    part_refused.events = part_refused.stats = false;
}

void result_refused_parts(bool *events, bool *stats)
{
    *events = part_refused.events;
    *stats = part_refused.stats;
}

/* ---- commands Redis refused as they were queued --------------------------
 *
 * An ACL's NOPERM (a put-back's stream, NS:dead, NS:events), an unknown
 * command or a wrong arity is refused as the command is queued, and EXEC
 * then runs nothing (EXECABORT). Written again as it was, the same
 * transaction was refused again every second: one job's refused write kept
 * every outcome that ended in the same pass from being stored, and a user
 * without NS:events could store none. The replies to the queued commands
 * (queued_replies.h) say which were refused. */

static int batch_add(struct job *job, result_done_fn *done);

/* The job among T's that queued command CMD, or -1: a shared one. */
static int command_owner(const struct txn *t, int cmd)
{
    for (int i = 0; i < t->n; i++)
        if (cmd >= t->items[i].first_cmd && cmd < t->items[i].first_cmd + t->items[i].ncmds)
            return i;
    return -1;
}

/* Said once at error level, naming the channel or key and Redis's error
 * (the ACL's NOPERM says whether the command or the name is missing).
 * False when it was off already: then the refusal was not of it. */
static bool refuse_part(struct daemon *d, bool *off, const char *command, const char *suffix,
                        const char *err, const char *without)
{
    if (*off)
        return false;
    *off = true;
    char key[128];
    result_key(d, key, sizeof(key), suffix);
    log_error("redis refused %s %s: %s; outcomes are stored without %s from now on, until "
              "a reload (SIGHUP) or a restart tries again (check redis.username's ACL)",
              command, key, err, without);
    return true;
}

/* A refusal of the command itself or of the names it uses (an ACL, an
 * unknown command or arity), which writing it again will meet again; not one
 * about Redis (OOM, READONLY, MISCONF, LOADING), which refuses every write
 * alike and passes. */
static bool refuses_the_command(const char *err)
{
    return !strncmp(err, "NOPERM", 6) || !strncmp(err, "ERR unknown", 11) ||
           !strncmp(err, "ERR wrong number of arguments", 29);
}

/* T was refused whole (EXECABORT). Each refusal goes to what it belongs to:
 * a job's own write (its record, dead letter, schedule or put-back) keeps
 * that job, said once at error level and written again a second later, its
 * put-back elsewhere when the stream refused it, as when a write fails as
 * the transaction runs (refused_commands()); a PUBLISH on NS:events or a
 * HINCRBY of NS:stats is left out from now on. The other jobs go straight
 * back into the batch, stored in this same loop pass without what was
 * refused. Each round keeps a job back or leaves a write out, so the rounds
 * end. Returns false when the refusals cannot be told apart (not known,
 * about Redis itself, or of a marker or an XACK, which no outcome can go
 * without): then T is not stored, as for any failed EXEC. Frees T when it
 * returns true. */
static bool retry_without_refused(struct txn *t)
{
    static bool said;           /* a marker or XACK refused: said once at error level */
    struct queued_refusal *v;
    int n = queued_refusals_take(t->id, &v);
    bool told_apart = n > 0;
    for (int k = 0; k < n && told_apart; k++) {
        int c = v[k].cmd, i = command_owner(t, c);
        told_apart = refuses_the_command(v[k].err);
        if (told_apart && i < 0 && (c < t->stats_first || c >= t->xacks_first)) {
            log_msg(said ? LOG_DEBUG : LOG_ERROR, "redis refused the %s of a batch of %d "
                    "outcome(s): %s; none of them stored, written again every second",
                    c < t->stats_first ? "marker (NS:txn:...)" : "XACK", t->n, v[k].err);
            said = true;
            told_apart = false;
        }
    }
    bool *refused = told_apart ? calloc((size_t)t->n, sizeof(*refused)) : NULL;
    for (int k = 0; k < n && refused; k++) {
        int c = v[k].cmd, i = command_owner(t, c);
        const char *err = v[k].err;
        bool progress = true;
        if (i < 0)
            progress = refuse_part(t->d, &part_refused.stats, "HINCRBY of", "stats", err,
                                   "counting them there");
        else if (t->items[i].events_cmd == c)
            progress = refuse_part(t->d, &part_refused.events, "PUBLISH on", "events", err,
                                   "publishing them there");
        else if (!refused[i]) {
            say_refused(&t->items[i], err, true);
            refused[i] = true;
            note_put_back_refused(t->d, &t->items[i], err);
        }
        if (!progress) {        /* refused while left out: cannot be */
            free(refused);
            refused = NULL;
        }
    }
    queued_refusals_free(v, n > 0 ? n : 0);
    if (!refused)
        return false;
    for (int i = 0; i < t->n; i++) {
        struct pending *p = &t->items[i];
        if (refused[i] || batch_add(p->job, p->done))
            p->done(p->job, false);
    }
    free(refused);
    txn_free(t);
    return true;
}

static void exec_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct txn *t = priv;
    if (!reply && !t->marker) {
        /* No job in it (each outcome's writing failed, out of memory), so
         * no marker: nothing to ask Redis about, and nothing to answer for. */
        txn_free(t);
        return;
    }
    if (!reply) {
        /* Its records are written again for reply_to if it turns out to
         * have run: not held through an outage meanwhile. */
        for (int i = 0; i < t->n; i++) {
            free(t->items[i].reply_text);
            t->items[i].reply_text = NULL;
        }
        list_append(&unsettled, &t->link);
        lost.outcomes += t->n;
        return;
    }
    bool ok = reply->type == REDIS_REPLY_ARRAY;
    if (reply->type == REDIS_REPLY_ERROR && !strncmp(reply->str, "EXECABORT", 9) &&
        retry_without_refused(t))
        return;
    if (reply->type == REDIS_REPLY_ERROR)
        log_error("storing %d outcome(s) failed: %s", t->n, reply->str);
    bool *refused = ok ? refused_commands(t, reply) : NULL;
    conclude(t, ok, refused);
    free(refused);
}

/* One XACK per stream for the stream jobs of T. */
static void send_xacks(struct daemon *d, const struct txn *t)
{
    const char **argv = malloc(((size_t)t->n + 3) * sizeof(*argv));
    bool *acked = calloc((size_t)t->n, sizeof(*acked));
    if (!argv || !acked)
        goto out;
    for (int i = 0; i < t->n; i++) {
        const struct job *first = t->items[i].job;
        if (acked[i] || first->source != SOURCE_STREAM)
            continue;
        int argc = 0;
        argv[argc++] = "XACK";
        argv[argc++] = first->stream;
        argv[argc++] = GROUP;
        for (int j = i; j < t->n; j++) {
            const struct job *job = t->items[j].job;
            if (!acked[j] && job->source == SOURCE_STREAM && !strcmp(job->stream, first->stream)) {
                argv[argc++] = job->entry_id;
                acked[j] = true;
            }
        }
        queue_command(d, argc, argv, NULL);
    }
out:
    free(argv);
    free(acked);
}

/* One HINCRBY per type.status field for the results in T. The fields are
 * few (job types x statuses): a small table, no allocation per job. */
#define STATS_FIELDS 64

static void send_stats(struct daemon *d, const struct txn *t)
{
    struct {
        char name[96];
        long n;
    } fields[STATS_FIELDS];
    int nfields = 0;
    char field[96];
    for (int i = 0; i < t->n && !part_refused.stats; i++) {
        const struct job *job = t->items[i].job;
        if (job->write_kind != WRITE_RESULT)
            continue;
        snprintf(field, sizeof(field), "%s.%s", reported_type(job), job_status_name(job->status));
        int f = 0;
        while (f < nfields && strcmp(fields[f].name, field))
            f++;
        if (f == nfields) {
            if (nfields == STATS_FIELDS)
                continue;   /* cannot happen: reported_type() bounds the types */
            memcpy(fields[nfields].name, field, sizeof(field));
            fields[nfields++].n = 0;
        }
        fields[f].n++;
    }
    char key[128], count[24];
    result_key(d, key, sizeof(key), "stats");
    for (int f = 0; f < nfields; f++) {
        snprintf(count, sizeof(count), "%ld", fields[f].n);
        const char *argv[] = {"HINCRBY", key, fields[f].name, count};
        queue_command(d, 4, argv, NULL);
    }
}

/* Dead letters keep at most max_job_bytes of the message, so an oversized
 * message cannot be used to bloat NS:dead; one too long to be read at all
 * (job->unread_len) keeps none of it. */
static void send_dead_letter(struct daemon *d, const struct job *job)
{
    char key[128], attempts[16];
    result_key(d, key, sizeof(key), "dead");
    json_t *error = result_error_json(&job->error);
    char *err = error ? jsonw_dumps(error, NULL) : NULL;
    json_decref(error);
    size_t raw_len = job->raw_len;
    bool truncated = job->unread_len || (int64_t)raw_len > d->cfg.max_job_bytes;
    if ((int64_t)raw_len > d->cfg.max_job_bytes)
        raw_len = (size_t)d->cfg.max_job_bytes;
    snprintf(attempts, sizeof(attempts), "%d", job->attempts);
    const char *argv[] = {"XADD", key, "*", "job", job->raw ? job->raw : "", "error", err,
                          "id", job->id, "attempts", attempts, "worker", d->worker_id,
                          "truncated", truncated ? "1" : "0"};
    size_t lens[15];
    for (int i = 0; i < 15; i++)
        lens[i] = argv[i] ? strlen(argv[i]) : 0;
    lens[4] = job->raw ? raw_len : 0;
    queue_command(d, 15, argv, lens);
    free(err);
}

/* P's result record, stored and published on NS:events (unless Redis
 * refused that: part_refused); kept in P for its reply_to, which is
 * published after the transaction (publish_replies()), so that the record
 * is written once. */
static int write_result(struct daemon *d, struct pending *p)
{
    struct job *job = p->job;
    char key[RESULT_KEY_SIZE], ttl[24];
    size_t len;
    char *text = record_text(d, job, &len);
    /* limits.max_record_bytes: nothing else bounds a record (a group's holds
     * every child's: 10,000 http children of http.max_bytes each), and one
     * Redis refuses (proto-max-bulk-len, 512 MB) or that takes longer to
     * send than a command may wait would be sent again for ever, and every
     * outcome batched with it too. */
    int64_t max = d->cfg.max_record_bytes;
    if (text && (int64_t)len > max) {
        free(text);
        log_job(LOG_WARN, job, "result record of %zu bytes is over limits.max_record_bytes "
                "(%" PRId64 "): stored as too_large", len, max);
        json_decref(job->result);
        job->result = NULL;
        json_decref(job->error_results);
        job->error_results = NULL;
        job->status = JOB_FAILED;
        job_error_set(&job->error, ERR_TOO_LARGE,
                      "the result record would be %zu bytes, more than limits.max_record_bytes "
                      "(%" PRId64 ")", len, max);
        text = record_text(d, job, &len);
    }
    if (!text) {
        log_job(LOG_ERROR, job, "out of memory writing the result record");
        return -1;
    }

    if (job->id[0]) {
        result_record_key(d, job->id, key);
        snprintf(ttl, sizeof(ttl), "%" PRId64, job->result_ttl);
        const char *argv[] = {"SET", key, text, "EX", ttl};
        const size_t lens[] = {3, strlen(key), len, 2, strlen(ttl)};
        queue_command(d, 5, argv, lens);
    }
    /* Not reply_to: see publish_replies(). */
    p->events_cmd = -1;
    if (!part_refused.events) {
        result_key(d, key, sizeof(key), "events");
        const char *pub[] = {"PUBLISH", key, text};
        const size_t lens[] = {7, strlen(key), len};
        p->events_cmd = queued_in_txn;
        queue_command(d, 3, pub, lens);
    }
    if (result_goes_to_dead(job))
        send_dead_letter(d, job);
    if (job->reply_to) {
        p->reply_text = text;
        p->reply_len = len;
    } else {
        free(text);
    }
    return 0;
}

/* Fields of a stream entry jobd writes when it puts a job back; intake reads
 * them so the id, attempt count and queue time survive the trip. A retry or
 * delay that NS:scheduled refused while draining (write_done()) is put back
 * with its time as "early_due": the daemon that reads it schedules it again
 * for then, as it does a job a cancel sweep made due early, instead of
 * running it at once. */
static int write_requeue(struct daemon *d, struct job *job)
{
    char attempts[16], queued[24], due[24];
    snprintf(attempts, sizeof(attempts), "%d", job->attempts);
    snprintf(queued, sizeof(queued), "%" PRId64, job->queued_at);
    snprintf(due, sizeof(due), "%" PRId64, job->write_due);
    const char *stream = requeue_stream(d, job);
    const char *argv[] = {"XADD", stream, "*", "job", job->raw, "id", job->id,
                          "attempts", attempts, "queued_at", queued, "early_due", due};
    int argc = job->write_due > now_ms() ? 13 : 11;
    size_t lens[13];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    lens[4] = job->raw_len;
    queue_command(d, argc, argv, lens);
    return 0;
}

/* NS:scheduled members carry everything needed to rebuild the stream entry;
 * numbers are strings because Lua's cjson would turn them into floats. */
static int write_schedule(struct daemon *d, struct job *job)
{
    static uint64_t nonce;
    char key[128], due[24], attempts[16], queued[24];
    result_key(d, key, sizeof(key), "scheduled");
    snprintf(due, sizeof(due), "%" PRId64, job->write_due);
    snprintf(attempts, sizeof(attempts), "%d", job->attempts);
    snprintf(queued, sizeof(queued), "%" PRId64, job->queued_at);
    /* Kept across resends: a write whose EXEC reply was lost with the
     * connection may have been applied, and the same member again is a
     * no-op where a new one would schedule the job twice. */
    if (!job->write_nonce[0])
        snprintf(job->write_nonce, sizeof(job->write_nonce), "%s-%" PRIu64, d->worker_id,
                 ++nonce);
    const char *stream = requeue_stream(d, job);
    /* The id first: the cancel sweep (scheduler.c) finds it without
     * reading past it into the job. */
    json_t *m = json_pack("{s:s, s:s, s:s%, s:s, s:s, s:s, s:s}", "id", job->id, "stream",
                          stream, "job", job->raw, job->raw_len, "attempts", attempts,
                          "queued_at", queued, "due", due, "nonce", job->write_nonce);
    char *member = m ? json_dumps(m, JSON_COMPACT) : NULL;
    json_decref(m);
    if (!member) {
        log_job(LOG_ERROR, job, "out of memory encoding the scheduled entry");
        return -1;
    }
    const char *argv[] = {"ZADD", key, due, member};
    queue_command(d, 4, argv, NULL);
    free(member);
    return 0;
}

/* Take the first N pending outcomes off the batch. */
static struct txn *take_batch(struct daemon *d, int n)
{
    struct txn *t = calloc(1, sizeof(*t) + (size_t)n * sizeof(struct pending));
    if (!t)
        return NULL;
    t->d = d;
    t->n = n;
    memcpy(t->items, batch.items, (size_t)n * sizeof(struct pending));
    batch.n -= n;
    memmove(batch.items, batch.items + n, (size_t)batch.n * sizeof(struct pending));
    return t;
}

/* Not stored: each caller keeps its job and writes it again when the
 * connection is back. */
static void hand_back(const struct pending *items, int n)
{
    for (int i = 0; i < n; i++)
        items[i].done(items[i].job, false);
}

static void flush_batch(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    while (batch.n) {
        int n = batch.n < BATCH_MAX ? batch.n : BATCH_MAX;
        struct txn *t = take_batch(d, n);
        if (!t) {
            hand_back(batch.items, batch.n);
            batch.n = 0;
            return;
        }
        /* A MULTI not sent (out of memory): the commands below would run
         * one by one and EXEC fail "without MULTI", after storing, counting
         * and publishing each outcome and acknowledging its entry, all of it
         * again at the next attempt. Nothing is sent; they go back. */
        const char *multi[] = {"MULTI"};
        if (!redis_ready(d->redis, REDIS_CMD) ||
            redis_send_queued(d->redis, REDIS_CMD, NULL, NULL, 1, multi, NULL)) {
            hand_back(t->items, n);
            free(t);
            continue;
        }
        queued_in_txn = 0;
        txn_broken = false;
        t->id = ++txn_seq;
        /* An outcome that could not be written (out of memory) leaves the
         * transaction, so its entry is not acknowledged or counted either:
         * it goes back to its job, to be written again. The written ones
         * move to the front, in order; the rest end up behind them. */
        int kept = 0;
        for (int i = 0; i < n; i++) {
            struct job *job = t->items[i].job;
            int rc = 0;
            t->items[i].first_cmd = queued_in_txn;
            switch (job->write_kind) {
            case WRITE_RESULT: rc = write_result(d, &t->items[i]); break;
            case WRITE_SCHEDULE: rc = write_schedule(d, job); break;
            case WRITE_REQUEUE: rc = write_requeue(d, job); break;
            }
            t->items[i].ncmds = queued_in_txn - t->items[i].first_cmd;
            if (rc == 0) {
                if (job->write_kind == WRITE_REQUEUE)
                    t->items[i].put_back_stream = strdup(requeue_stream(d, job));
                struct pending written = t->items[i];
                t->items[i] = t->items[kept];
                t->items[kept++] = written;
            }
        }
        hand_back(t->items + kept, n - kept);
        t->n = kept;
        send_markers(d, t);
        t->stats_first = queued_in_txn;
        send_stats(d, t);
        t->xacks_first = queued_in_txn;
        send_xacks(d, t);
        /* A command left out (out of memory) would make the EXEC store an
         * outcome in part: an entry acknowledged without its record, when
         * the SET was the one. An EXEC not sent leaves the transaction open
         * in Redis, where the next one's commands would join it. Either
         * way, dropping the connection makes Redis discard it, and the
         * outcomes are written again once it is back. */
        const char *exec[] = {"EXEC"};
        if (txn_broken || redis_send(d->redis, REDIS_CMD, exec_reply, t, 0, 1, exec, NULL)) {
            hand_back(t->items, t->n);
            txn_free(t);
            redis_reset(d->redis, REDIS_CMD, "out of memory sending an outcome transaction");
        }
    }
}

static int batch_add(struct job *job, result_done_fn *done)
{
    if (batch.n == batch.cap) {
        int cap = batch.cap ? 2 * batch.cap : 256;
        struct pending *grown = realloc(batch.items, (size_t)cap * sizeof(*grown));
        if (!grown)
            return -1;
        batch.items = grown;
        batch.cap = cap;
    }
    batch.items[batch.n++] = (struct pending){.job = job, .done = done, .events_cmd = -1};
    event_active(batch.flush, EV_TIMEOUT, 0);   /* once, when this loop pass ends */
    return 0;
}

int result_write(struct daemon *d, struct job *job, result_done_fn *done)
{
    if (!redis_ready(d->redis, REDIS_CMD))
        return -1;
    if (!batch.flush) {
        batch.flush = event_new(d->base, -1, 0, flush_batch, d);
        if (!batch.flush)
            return -1;
    }
    return batch_add(job, done);
}

void result_shutdown(void)
{
    if (recheck)
        event_free(recheck);
    recheck = NULL;
    if (batch.flush)
        event_free(batch.flush);
    free(batch.items);
    memset(&batch, 0, sizeof(batch));
    /* Their jobs went with the runner; a marker left behind expires. */
    while (unsettled.head) {
        struct txn *t = list_entry(unsettled.head, struct txn, link);
        list_remove(&unsettled, &t->link);
        txn_free(t);
    }
    free(spent_markers.seqs);
    memset(&spent_markers, 0, sizeof(spent_markers));
    queued_replies_reset();
    memset(&part_refused, 0, sizeof(part_refused));
    memset(&lost, 0, sizeof(lost));
}
