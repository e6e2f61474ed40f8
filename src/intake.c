/* intake.c - stream intake (see intake.h): how much may be taken, reading
 * the streams, and the module's life; pub/sub is in intake_pubsub.c. */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cancels.h"
#include "daemon.h"
#include "intake.h"
#include "intake_internal.h"
#include "job.h"
#include "log.h"
#include "redis.h"
#include "result.h"
#include "runner.h"
#include "timer.h"

#define GROUP "jobd"
#define BLOCK_MS 1000
#define READ_GRACE_MS 5000
/* How long the stream connection's read of NS:cancels waits for the
 * subscriptions' confirmation to do it for both (stream_up()): a
 * subscriber that fails to connect calls no hook. */
#define STREAM_WAITS_SUBS_MS 1000
#define READ_RETRY_MS 1000
/* How often a stream that cannot be read (a key of another type, a key the
 * ACL user may not touch) is asked about again. */
#define UNREADABLE_RECHECK_MS 5000

static const char *stream_name(const struct stream *st)
{
    return st->in->d->cfg.streams[st - st->in->streams];
}

void intake_maybe_announce(struct intake *in)
{
    if (in->announced || !in->groups_ready || in->subs_confirmed < in->subs_expected ||
        !redis_ready(in->d->redis, REDIS_CMD))
        return;
    in->announced = true;
    daemon_intake_ready(in->d);
}

/* ---- room ------------------------------------------------------------------ */

/* What one read may bring, by the sizes below. Jobs of a few kB are read
 * intake.batch at a time, as before; big ones fewer. */
#define READ_PLAN_BYTES (4 << 20)

/* The envelope size reads are planned with: the largest recent one, eased
 * down by 1/16 of the difference with each smaller one, so that one big
 * envelope makes reads small at once and small ones grow them again. */
void intake_note_size(struct intake *in, size_t len)
{
    int64_t n = len ? (int64_t)len : 1;
    if (n >= in->est_bytes)
        in->est_bytes = n;
    else
        in->est_bytes -= (in->est_bytes - n) / 16;
}

bool intake_bytes_spent(const struct daemon *d)
{
    return runner_held_bytes(d->runner) >= d->cfg.max_held_bytes;
}

int intake_room(const struct intake *in)
{
    struct daemon *d = in->d;
    int room = d->cfg.max_inflight - runner_inflight(d->runner);
    if (room <= 0 || intake_bytes_spent(d))
        return 0;
    int64_t held = runner_held_bytes(d->runner), budget = d->cfg.max_held_bytes;
    /* Until an envelope was seen, assume the largest allowed. Rounded up:
     * what is left of the budget always admits one more. */
    int64_t est = in->est_bytes > 0 ? in->est_bytes : d->cfg.max_job_bytes;
    int64_t fit = (budget - held + est - 1) / est;
    /* And no more than READ_PLAN_BYTES of them in one read (at least one):
     * every entry of a read is parsed in the same loop pass, and a parse
     * takes time in proportion (20,000 batch URLs, ~23 MB parsed: 70 ms).
     * A read of a hundred such held the loop for 7 s, every other job's
     * timers and replies with it. */
    int64_t per_read = READ_PLAN_BYTES / est > 0 ? READ_PLAN_BYTES / est : 1;
    if (fit > per_read)
        fit = per_read;
    return fit < room ? (int)fit : room;
}

/* Say when reading stops for bytes: the first time at info (an operator
 * learns the budget binds), later ones and resuming at debug, since under a
 * steady load of big envelopes reading may pause every few jobs. */
static void note_pause(struct intake *in, bool paused)
{
    struct daemon *d = in->d;
    if (paused == in->bytes_paused)
        return;
    in->bytes_paused = paused;
    if (!paused) {
        log_debug("intake resumed: %" PRId64 " bytes held, limits.max_held_bytes %" PRId64,
                  runner_held_bytes(d->runner), d->cfg.max_held_bytes);
        return;
    }
    log_msg(in->bytes_pause_told ? LOG_DEBUG : LOG_INFO,
            "intake paused: %" PRId64 " bytes of envelopes held, limits.max_held_bytes %" PRId64
            "%s", runner_held_bytes(d->runner), d->cfg.max_held_bytes,
            in->bytes_pause_told ? "" : " (further pauses are logged at debug level)");
    in->bytes_pause_told = true;
}

/* ---- streams --------------------------------------------------------------- */

static void read_streams(struct intake *in);

/* The value of field NAME, a string, or an integer: a value too long to be
 * read, dropped as it came (redis_loop.h; Redis itself sends only strings
 * there). Field names are binary: compared by length and bytes, since as C
 * strings "job\0x" would count as "job". */
static const redisReply *field(const redisReply *fields, const char *name)
{
    size_t name_len = strlen(name);
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type == REDIS_REPLY_STRING &&
            (v->type == REDIS_REPLY_STRING || v->type == REDIS_REPLY_INTEGER) &&
            k->len == name_len && !memcmp(k->str, name, name_len))
            return v;
    }
    return NULL;
}

/* The string value of field NAME; NULL when there is none (or it was too
 * long to be read: only "job" may be, and it has its own record). */
static const char *field_value(const redisReply *fields, const char *name, size_t *len)
{
    const redisReply *v = field(fields, name);
    if (!v || v->type != REDIS_REPLY_STRING)
        return NULL;
    if (len)
        *len = v->len;
    return v->str;
}

int intake_parse_entry(const redisReply *entry, const char *stream, struct job_message *msg)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING)
        return -1;
    const redisReply *fields = entry->element[1];
    memset(msg, 0, sizeof(*msg));
    msg->source = SOURCE_STREAM;
    msg->stream = stream;
    msg->entry_id = entry->element[0]->str;
    msg->raw = "";
    if (fields->type == REDIS_REPLY_INTEGER) {
        /* More fields than jobd reads: skipped as they came, their count in
         * their place (redis_loop.h). Redis itself never sends one there. */
        size_t n = fields->integer > 0 ? (size_t)fields->integer : 1;
        msg->unread_fields = (n + 1) / 2;
        /* Reads are planned with a signed size: one from a hostile server
         * must not wrap. */
        msg->unread_len = n < INT64_MAX / 6 ? n * 6 : INT64_MAX;
        return 0;
    }
    if (fields->type != REDIS_REPLY_ARRAY) {
        /* [id, nil]: the entry was deleted while pending. Nothing to run. */
        msg->problem = "stream entry was deleted while pending";
        return 0;
    }
    const redisReply *job = field(fields, "job");
    if (!job) {
        msg->problem = "stream entry has no \"job\" field";
    } else if (job->type == REDIS_REPLY_STRING) {
        msg->raw = job->str;
        msg->raw_len = job->len;
    } else {
        /* Longer than jobd reads: dropped unread, rejected as too_large. */
        msg->unread_len = job->integer > 0 ? (size_t)job->integer : 1;
    }
    msg->id = field_value(fields, "id", NULL);
    const char *v;
    if ((v = field_value(fields, "attempts", NULL)))
        msg->attempts = atoi(v) > 0 && atoi(v) < 1000 ? atoi(v) : 0;
    if ((v = field_value(fields, "queued_at", NULL)))
        msg->queued_at = strtoll(v, NULL, 10);
    if ((v = field_value(fields, "due", NULL))) {
        msg->due_ms = strtoll(v, NULL, 10);
        msg->has_due = msg->due_ms > 0;
    }
    if ((v = field_value(fields, "early_due", NULL)))
        msg->early_due_ms = strtoll(v, NULL, 10);
    return 0;
}

static void take_entry(struct intake *in, const char *stream, const redisReply *entry)
{
    struct job_message msg;
    if (intake_parse_entry(entry, stream, &msg) == 0) {
        /* Reads are planned with what a job holds once parsed, which can be
         * many times its envelope (an http batch's requests, a group's
         * children: runner_charge_parsed(), child_cost()). An entry dropped
         * unread holds nothing here, but reads are planned with its length
         * all the same: more of them would come one read at a time, not as
         * one reply of gigabytes that Redis has to build. */
        int64_t held = runner_held_bytes(in->d->runner);
        runner_accept(in->d->runner, &msg);
        int64_t cost = runner_held_bytes(in->d->runner) - held;
        if (cost < (int64_t)msg.raw_len)
            cost = (int64_t)msg.raw_len;
        intake_note_size(in, msg.unread_len > (size_t)cost ? msg.unread_len : (size_t)cost);
    }
}

/* Remember the newest entry id read from STREAM: should the group vanish
 * (XGROUP DESTROY, the stream deleted), it is made again from there. */
static void note_last_read(struct intake *in, const char *stream, const redisReply *entries)
{
    if (!entries->elements)
        return;
    const redisReply *last = entries->element[entries->elements - 1];
    if (last->type != REDIS_REPLY_ARRAY || last->elements < 1 ||
        last->element[0]->type != REDIS_REPLY_STRING || last->element[0]->len >= 48)
        return;
    for (int s = 0; s < in->d->cfg.nstreams; s++)
        if (!strcmp(in->d->cfg.streams[s], stream)) {
            snprintf(in->streams[s].last_read, sizeof(in->streams[s].last_read), "%s",
                     last->element[0]->str);
            return;
        }
}

static void retry_read_later(struct intake *in)
{
    timer_add_ms(in->retry_timer, READ_RETRY_MS);
}

static void create_groups(struct intake *in, bool only_refused);

static void read_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct intake *in = priv;
    int asked = in->reserved;
    size_t taken = 0;
    in->reading = false;
    in->reserved = 0;
    if (!reply)
        return;     /* connection gone; its ready hook starts reading again */
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("XREADGROUP: %s", reply->str);
        if (!strncmp(reply->str, "NOGROUP", 7)) {
            /* Someone deleted the stream or the group: make them again. */
            in->groups_ready = false;
            create_groups(in, false);
        } else if (redis_key_error(reply->str)) {
            /* One stream spoils the read of all (a key replaced by one of
             * another type): before reading again, each is asked on its
             * own, and one that answers with such an error is left out. */
            in->probe = true;
        }
        retry_read_later(in);
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t s = 0; s < reply->elements; s++) {
            const redisReply *sr = reply->element[s];
            if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 ||
                sr->element[0]->type != REDIS_REPLY_STRING ||
                sr->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            for (size_t e = 0; e < sr->element[1]->elements; e++)
                take_entry(in, sr->element[0]->str, sr->element[1]->element[e]);
            taken += sr->element[1]->elements;
            note_last_read(in, sr->element[0]->str, sr->element[1]);
        }
    }
    /* A nil reply is the BLOCK timeout: simply read again. A short read
     * (fewer entries than asked, so the stream is drained) under
     * intake.linger_us waits out the rest of the linger from when it was
     * sent: at a steady trickle every read then brings what arrived over
     * the linger, not one job each. A read that came back full, or a first
     * job after a quiet spell (its read was sent long ago), reads again at
     * once; so does one whose timer could not be armed. */
    if (in->d->cfg.linger_us > 0 && taken > 0 && taken < (size_t)asked) {
        int64_t wait = in->read_sent_us + in->d->cfg.linger_us - mono_us();
        if (wait > 0 && precise_timer_arm(in->linger, wait) == 0)
            return;
    }
    read_streams(in);
}

static void read_streams(struct intake *in)
{
    struct daemon *d = in->d;
    if (in->stopped || in->reading || !in->groups_ready || !redis_ready(d->redis, REDIS_STREAM) ||
        precise_timer_pending(in->linger))
        return;
    int room = intake_room(in);
    if (room <= 0) {
        /* Full: intake_capacity_changed() resumes. */
        if (intake_bytes_spent(d))
            note_pause(in, true);
        return;
    }
    note_pause(in, false);
    if (room > d->cfg.batch)
        room = d->cfg.batch;
    int n = d->cfg.nstreams - in->nunreadable;
    if (n <= 0)
        return;     /* none readable: the recheck reads once one is */
    int argc = 9 + 2 * n;
    const char **argv = calloc((size_t)argc, sizeof(*argv));
    if (!argv)
        return;
    char count[16], block[16];
    snprintf(count, sizeof(count), "%d", room);
    snprintf(block, sizeof(block), "%d", BLOCK_MS);
    int i = 0;
    argv[i++] = "XREADGROUP";
    argv[i++] = "GROUP";
    argv[i++] = GROUP;
    argv[i++] = d->worker_id;
    argv[i++] = "COUNT";
    argv[i++] = count;
    argv[i++] = "BLOCK";
    argv[i++] = block;
    argv[i++] = "STREAMS";
    for (int s = 0; s < d->cfg.nstreams; s++)
        if (in->streams[s].readable)
            argv[i++] = d->cfg.streams[s];
    for (int s = 0; s < n; s++)
        argv[i++] = ">";
    if (redis_send(d->redis, REDIS_STREAM, read_reply, in, BLOCK_MS + READ_GRACE_MS, argc, argv,
                   NULL) == 0) {
        in->reading = true;
        in->reserved = room;
        in->read_sent_us = mono_us();
    }
    free(argv);
}


/* OK: stream ST can be read (again); else WHAT failed on it with ERR. One
 * that cannot is left out of the reads, so that it does not stop the others
 * (a read naming it fails whole), and out of parks and put-backs; it is
 * said once at error level and asked about again every
 * UNREADABLE_RECHECK_MS: its jobs wait, durable, until someone repairs the
 * key. */
static void set_readable(struct stream *st, bool ok, const char *what, const char *err)
{
    struct intake *in = st->in;
    if (ok && st->refused)
        log_notice("stream %s can be read again", stream_name(st));
    else if (!ok && !st->refused)
        log_error("stream %s cannot be read: %s: %s; it is left out of the reads and of "
                  "put-backs (its jobs wait there) and asked again every %d s",
                  stream_name(st), what, err, UNREADABLE_RECHECK_MS / 1000);
    if (ok != st->readable)
        in->nunreadable += ok ? -1 : 1;
    st->readable = ok;
    st->refused = !ok;
    if (!ok)
        timer_add_ms(in->unreadable_timer, UNREADABLE_RECHECK_MS);
}

/* Whether stream ST can be read, from its XGROUP CREATE reply. Only an
 * error about this key leaves it out. One about Redis (LOADING after a
 * restart, BUSY, MASTERDOWN) is said and the read is tried as before, a
 * second after it fails: leaving the stream out paused it for the whole
 * recheck (found by bench/soak). */
static void note_group(struct stream *st, const redisReply *reply)
{
    bool ok = reply->type != REDIS_REPLY_ERROR || !strncmp(reply->str, "BUSYGROUP", 9);
    if (!ok && !redis_key_error(reply->str)) {
        log_warn("XGROUP CREATE %s: %s", stream_name(st), reply->str);
        ok = true;
    }
    set_readable(st, ok, "XGROUP CREATE", ok ? NULL : reply->str);
}

static void group_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct stream *st = priv;
    struct intake *in = st->in;
    if (!reply)
        return;
    note_group(st, reply);
    if (--in->groups_waiting == 0) {
        in->groups_ready = true;
        intake_maybe_announce(in);
        read_streams(in);
    }
}

/* A stream that could not be read, asked again while the others are read. */
static void recheck_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct stream *st = priv;
    if (!reply || st->readable)
        return;
    note_group(st, reply);
    if (st->readable)
        read_streams(st->in);   /* the next read names it (after one outstanding) */
}

static void recheck_unreadable(evutil_socket_t fd, short what, void *arg)
{
    struct intake *in = arg;
    if (in->groups_ready)
        create_groups(in, true);
}

/* Group "jobd" at id 0 with MKSTREAM: jobs queued before any daemon ran are
 * read, not skipped. Sent on the stream connection so it precedes the read.
 * A group that vanished while this daemon read from it is made again after
 * the last entry it read there: at 0, every entry still in the stream (all
 * of its history: jobd never trims) ran again. ONLY_REFUSED: ask again about
 * the streams that could not be read, while the others are. */
static void create_groups(struct intake *in, bool only_refused)
{
    struct daemon *d = in->d;
    if (!only_refused)
        in->groups_waiting = d->cfg.nstreams;
    for (int s = 0; s < d->cfg.nstreams; s++) {
        struct stream *st = &in->streams[s];
        if (only_refused && !st->refused)
            continue;
        const char *from = st->last_read[0] ? st->last_read : "0";
        const char *argv[] = {"XGROUP", "CREATE", stream_name(st), GROUP, from, "MKSTREAM"};
        if (redis_send(d->redis, REDIS_STREAM, only_refused ? recheck_reply : group_reply, st, 0,
                       6, argv, NULL) && !only_refused)
            in->groups_waiting--;
    }
}

static void client_id_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct intake *in = priv;
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        in->stream_client_id = reply->integer;
    else if (reply && reply->type == REDIS_REPLY_ERROR)
        log_debug("CLIENT ID: %s; a drain waits for the blocked read instead", reply->str);
}

static void stream_cancels_read(void *arg)
{
    struct intake *in = arg;
    in->stream_read_for_subs = false;
    create_groups(in, false);
}

/* Subscriptions on their way: the subscriber connecting, or its
 * subscriptions sent and not all confirmed yet. */
static bool subs_pending(const struct intake *in)
{
    struct redis *r = in->d->redis;
    return !in->unsubscribing &&
           (redis_connecting(r, REDIS_SUB) ||
            (redis_ready(r, REDIS_SUB) && in->subs_confirmed < in->subs_expected));
}

/* The stream connection's read of NS:cancels, before its groups, so its
 * first read of jobs: a job waiting in the stream whose cancel this daemon
 * never heard ends cancelled. FOR_SUBS: sent after the subscriptions were
 * confirmed, it is also the read that follows them (intake_pubsub.c). */
void intake_stream_read_cancels(struct intake *in, bool for_subs)
{
    in->stream_awaits_subs = false;
    evtimer_del(in->subs_wait);
    in->stream_read_for_subs = for_subs;
    cancels_load(in->d->cancels, REDIS_STREAM, stream_cancels_read, in);
}

static void stream_up(void *arg)
{
    struct intake *in = arg;
    in->reading = false;
    in->groups_ready = false;
    in->stream_client_id = 0;
    const char *argv[] = {"CLIENT", "ID"};
    redis_send(in->d->redis, REDIS_STREAM, client_id_reply, in, 0, 2, argv, NULL);
    /* Subscriptions on their way (both connections just came up): their
     * confirmation reads NS:cancels anyway, a round trip from now, so the
     * stream's read waits for it and serves both; a subscriber that goes
     * instead lets it go at once (intake_sub_down()). */
    if (subs_pending(in) && timer_add_ms(in->subs_wait, STREAM_WAITS_SUBS_MS) == 0)
        in->stream_awaits_subs = true;
    else
        intake_stream_read_cancels(in, false);
}

static void subs_wait_over(evutil_socket_t fd, short what, void *arg)
{
    struct intake *in = arg;
    if (in->stream_awaits_subs)
        intake_stream_read_cancels(in, false);
}

static void stream_down(void *arg)
{
    struct intake *in = arg;
    in->reading = false;
    in->reserved = 0;
    in->groups_ready = false;
    in->announced = false;
    in->stream_client_id = 0;
    in->stream_awaits_subs = false;
    evtimer_del(in->subs_wait);
    /* Lost with its read unanswered: the confirmation's read is still owed. */
    if (in->stream_read_for_subs) {
        in->stream_read_for_subs = false;
        cancels_load(in->d->cancels, REDIS_CMD, NULL, NULL);
    }
}

static void linger_done(void *arg)
{
    read_streams(arg);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct intake *in = arg;
    if (in->probe && in->groups_ready && redis_ready(in->d->redis, REDIS_STREAM)) {
        in->probe = false;
        in->groups_ready = false;
        create_groups(in, false);   /* its replies read again */
        return;
    }
    read_streams(in);
}

/* ---- lifecycle ------------------------------------------------------------- */

struct intake *intake_create(struct daemon *d)
{
    struct intake *in = calloc(1, sizeof(*in));
    if (!in)
        return NULL;
    in->d = d;
    snprintf(in->control_channel, sizeof(in->control_channel), "%s:control", d->cfg.ns);
    snprintf(in->heartbeat_channel, sizeof(in->heartbeat_channel), "%s:heartbeat:%s", d->cfg.ns,
             d->worker_id);
    snprintf(in->events_channel, sizeof(in->events_channel), "%s:events", d->cfg.ns);
    snprintf(in->heartbeat_prefix, sizeof(in->heartbeat_prefix), "%s:heartbeat:", d->cfg.ns);
    in->retry_timer = evtimer_new(d->base, retry_cb, in);
    in->linger = precise_timer_new(d->base, linger_done, in);
    in->ping_timer = timer_new_periodic(d->base, HEARTBEAT_EVERY_MS, intake_ping_cb, in);
    in->unreadable_timer = evtimer_new(d->base, recheck_unreadable, in);
    in->subs_wait = evtimer_new(d->base, subs_wait_over, in);
    in->streams = calloc((size_t)d->cfg.nstreams, sizeof(*in->streams));
    in->chan_refused = calloc((size_t)intake_chan_slots(in), sizeof(*in->chan_refused));
    in->chan_seq = calloc((size_t)intake_chan_slots(in), sizeof(*in->chan_seq));
    if (!in->retry_timer || !in->linger || !in->ping_timer || !in->unreadable_timer ||
        !in->subs_wait || !in->streams || !in->chan_refused || !in->chan_seq) {
        intake_free(in);
        return NULL;
    }
    for (int s = 0; s < d->cfg.nstreams; s++)
        in->streams[s] = (struct stream){.in = in, .readable = true};
    struct redis_hooks sub = {intake_sub_up, intake_sub_down, in};
    struct redis_hooks stream = {stream_up, stream_down, in};
    redis_set_hooks(d->redis, REDIS_SUB, &sub);
    redis_set_hooks(d->redis, REDIS_STREAM, &stream);
    return in;
}

void intake_free(struct intake *in)
{
    if (!in)
        return;
    if (in->retry_timer)
        event_free(in->retry_timer);
    precise_timer_free(in->linger);
    if (in->ping_timer)
        event_free(in->ping_timer);
    if (in->unreadable_timer)
        event_free(in->unreadable_timer);
    if (in->subs_wait)
        event_free(in->subs_wait);
    free(in->streams);
    free(in->chan_refused);
    free(in->chan_seq);
    free(in);
}

void intake_capacity_changed(struct intake *in)
{
    if (!in)
        return;
    read_streams(in);
    intake_pubsub_capacity_changed(in);
}

static void unblock_reply(struct redis *r, redisReply *reply, void *priv)
{
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_debug("CLIENT UNBLOCK: %s; the drain waits for the blocked read", reply->str);
}

void intake_stop(struct intake *in)
{
    in->stopped = true;
    evtimer_del(in->retry_timer);
    evtimer_del(in->unreadable_timer);
    precise_timer_cancel(in->linger);
    /* A read blocked in Redis would still deliver what is added in the next
     * second (even the jobs this drain puts back), only to have it put back
     * again, and the exit waits for it. Ended as by its timeout, it returns
     * nothing. (If it is not blocked yet, this does nothing: the read then
     * ends by its BLOCK timeout, as it did before.) */
    if (in->reading && in->stream_client_id > 0) {
        char id[24];
        snprintf(id, sizeof(id), "%lld", in->stream_client_id);
        const char *argv[] = {"CLIENT", "UNBLOCK", id};
        redis_send(in->d->redis, REDIS_CMD, unblock_reply, in, 0, 3, argv, NULL);
    }
}

int intake_idle(const struct intake *in)
{
    return !in->reading && !in->parks_unanswered;
}

bool intake_stream_readable(const struct intake *in, int s)
{
    return in->streams[s].readable;
}

void intake_write_refused(struct intake *in, const char *stream, const char *err)
{
    if (!in || !redis_key_error(err))
        return;
    for (int s = 0; s < in->d->cfg.nstreams; s++)
        if (in->streams[s].readable && !strcmp(in->d->cfg.streams[s], stream))
            set_readable(&in->streams[s], false, "XADD", err);
}

int intake_unreadable_streams(const struct intake *in)
{
    return in ? in->nunreadable : 0;
}

const char *intake_home_stream(const struct intake *in, const char *stream)
{
    const char *first = NULL;
    for (int s = in->d->cfg.nstreams - 1; s >= 0; s--) {
        if (!in->streams[s].readable)
            continue;
        if (stream && !strcmp(in->d->cfg.streams[s], stream))
            return stream;
        first = in->d->cfg.streams[s];
    }
    return first ? first : stream ? stream : in->d->cfg.streams[0];
}

/* For main.c: the command connection came up (announce may now be due). */
void intake_cmd_ready(struct intake *in)
{
    intake_maybe_announce(in);
}
