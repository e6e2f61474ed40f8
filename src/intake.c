/* intake.c - pub/sub and stream intake (see intake.h). */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cancels.h"
#include "daemon.h"
#include "intake.h"
#include "job.h"
#include "log.h"
#include "redis.h"
#include "result.h"
#include "runner.h"
#include "timer.h"

#define GROUP "jobd"
#define BLOCK_MS 1000
#define READ_GRACE_MS 5000
#define HEARTBEAT_EVERY_MS 2000
#define HEARTBEAT_LIMIT_MS 6000
/* How long the stream connection's read of NS:cancels waits for the
 * subscriptions' confirmation to do it for both (stream_up()): a
 * subscriber that fails to connect calls no hook. */
#define STREAM_WAITS_SUBS_MS 1000
#define READ_RETRY_MS 1000
/* How often a stream that cannot be read (a key of another type, a key the
 * ACL user may not touch) is asked about again. */
#define UNREADABLE_RECHECK_MS 5000
/* How long the exit waits for the subscriber to confirm its UNSUBSCRIBEs. */
#define UNSUBSCRIBE_WAIT_MS 5000

/* One configured stream (intake.streams is restart-only, so their number
 * is fixed; their names are read from d->cfg each time, since a reload
 * frees the strings even of settings that did not change). */
struct stream {
    struct intake *in;
    char last_read[48];         /* the last entry id read; "": none */
    bool readable;              /* its group exists: the read names it */
    bool refused;               /* its group could not be made; said, and asked again */
};

struct intake {
    struct daemon *d;
    bool stopped;
    bool reading;               /* an XREADGROUP is outstanding */
    int reserved;               /* the COUNT it asked for: slots promised to it */
    int64_t read_sent_us;       /* when it was sent (mono) */
    bool groups_ready;          /* XGROUP CREATE answered on this connection */
    long long stream_client_id; /* CLIENT ID of the stream connection; 0: not known */
    int groups_waiting;
    int subs_expected, subs_confirmed;
    /* NS:cancels is read by the stream connection before its first read
     * of jobs, and once the subscriptions are confirmed. When both come up
     * together (start-up, Redis back), one read serves both: the stream's,
     * held until the confirmation (see stream_read_cancels()). */
    bool stream_awaits_subs;    /* the stream's read is held for it */
    bool stream_read_for_subs;  /* the stream's read in flight is the confirmation's too */
    struct event *subs_wait;    /* ends stream_awaits_subs */
    /* The end of a drain: UNSUBSCRIBE sent, and every message Redis
     * delivered before it read (parked) once it is confirmed. */
    bool unsubscribing, unsubscribed;
    int64_t unsubscribe_sent_at;    /* mono ms */
    int parks_unanswered;       /* park XADDs Redis has not answered yet */
    /* Pub/sub backpressure when parking fails (see check_job_channels()). */
    bool park_failing;          /* the last park was refused: its job is held here */
    bool jobs_paused;           /* job channels left: park_failing at the byte budget */
    enum { JOBS_ON, JOBS_LEAVING, JOBS_OFF } job_subs; /* on this subscriber connection */
    int job_unsubs_left;        /* JOBS_LEAVING: UNSUBSCRIBEs not yet confirmed */
    int64_t subscribed_at;      /* mono ms the (P)SUBSCRIBEs went out */
    bool announced;             /* daemon_intake_ready() called for this round */
    char control_channel[128];
    char heartbeat_channel[256];
    char events_channel[128];
    char heartbeat_prefix[128];     /* every daemon's heartbeat channel */
    int64_t ping_sent_at;       /* mono ms, 0 when no ping is out */
    struct event *ping_timer;
    struct event *retry_timer;  /* read again after an error */
    struct precise_timer *linger; /* read again after a short read */
    uint64_t overflowed;
    int64_t est_bytes;          /* envelope size reads are planned with; 0: none seen */
    bool bytes_paused;          /* reading stopped at limits.max_held_bytes */
    bool bytes_pause_told;      /* the first such pause was logged at info */
    struct stream *streams;     /* per configured stream, in the config's order */
    int nunreadable;            /* streams whose group could not be made */
    bool probe;                 /* a read failed: ask each stream again before the next */
    struct event *unreadable_timer;
};

static const char *stream_name(const struct stream *st)
{
    return st->in->d->cfg.streams[st - st->in->streams];
}

static void maybe_announce(struct intake *in)
{
    if (in->announced || !in->groups_ready || in->subs_confirmed < in->subs_expected ||
        !redis_ready(in->d->redis, REDIS_CMD))
        return;
    in->announced = true;
    daemon_intake_ready(in->d);
}

/* ---- room ------------------------------------------------------------------ */

/* The envelope size reads are planned with: the largest recent one, eased
 * down by 1/16 of the difference with each smaller one, so that one big
 * envelope makes reads small at once and small ones grow them again. */
static void note_size(struct intake *in, size_t len)
{
    int64_t n = len ? (int64_t)len : 1;
    if (n >= in->est_bytes)
        in->est_bytes = n;
    else
        in->est_bytes -= (in->est_bytes - n) / 16;
}

/* The jobs held have reached limits.max_held_bytes. */
static bool bytes_spent(const struct daemon *d)
{
    return runner_held_bytes(d->runner) >= d->cfg.max_held_bytes;
}

int intake_room(const struct intake *in)
{
    struct daemon *d = in->d;
    int room = d->cfg.max_inflight - runner_inflight(d->runner);
    if (room <= 0 || bytes_spent(d))
        return 0;
    int64_t held = runner_held_bytes(d->runner), budget = d->cfg.max_held_bytes;
    /* Until an envelope was seen, assume the largest allowed. Rounded up:
     * what is left of the budget always admits one more. */
    int64_t est = in->est_bytes > 0 ? in->est_bytes : d->cfg.max_job_bytes;
    int64_t fit = (budget - held + est - 1) / est;
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

/* The value of field NAME. Field names are binary: compared by length and
 * bytes, since as C strings "job\0x" would count as "job". */
static const char *field_value(const redisReply *fields, const char *name, size_t *len)
{
    size_t name_len = strlen(name);
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *k = fields->element[i], *v = fields->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            k->len == name_len && !memcmp(k->str, name, name_len)) {
            if (len)
                *len = v->len;
            return v->str;
        }
    }
    return NULL;
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
    if (fields->type != REDIS_REPLY_ARRAY) {
        /* [id, nil]: the entry was deleted while pending. Nothing to run. */
        msg->problem = "stream entry was deleted while pending";
        return 0;
    }
    const char *raw = field_value(fields, "job", &msg->raw_len);
    if (raw)
        msg->raw = raw;
    else
        msg->problem = "stream entry has no \"job\" field";
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
        note_size(in, msg.raw_len);
        runner_accept(in->d->runner, &msg);
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
        if (bytes_spent(d))
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
        maybe_announce(in);
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
 * confirmed, it is also the read that follows them (sub_message()). */
static void stream_read_cancels(struct intake *in, bool for_subs)
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
     * instead lets it go at once (sub_down()). */
    if (subs_pending(in) && timer_add_ms(in->subs_wait, STREAM_WAITS_SUBS_MS) == 0)
        in->stream_awaits_subs = true;
    else
        stream_read_cancels(in, false);
}

static void subs_wait_over(evutil_socket_t fd, short what, void *arg)
{
    struct intake *in = arg;
    if (in->stream_awaits_subs)
        stream_read_cancels(in, false);
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

/* ---- pub/sub --------------------------------------------------------------- */

/* A parked job, kept until Redis has said that its XADD was stored. */
struct parked {
    struct intake *in;
    char stream[513];           /* where (intake.streams names are up to 512 bytes) */
    char queued_at[24];         /* when it was first parked (ms) */
    size_t len;
    char raw[];
};

static bool send_park(struct intake *in, struct parked *p);
static void subscribe(struct intake *in, redisAsyncContext *ac, const char *channel);
static bool unsubscribe(struct intake *in, redisAsyncContext *ac, const char *channel);

/* Channel I of intake.channels is one a pause leaves and joins: not jobd's
 * own NS:control (cancels must still be heard) or heartbeat channel, nor a
 * repeat of an earlier item (hiredis 0.14.1 forgets a channel's callback at
 * its first UNSUBSCRIBE confirmation, so a second one would never be
 * counted, and the channels never joined again). */
static bool job_channel(const struct intake *in, int i)
{
    const char *ch = in->d->cfg.channels[i];
    if (!strcmp(ch, in->control_channel) || !strcmp(ch, in->heartbeat_channel))
        return false;
    for (int j = 0; j < i; j++)
        if (!strcmp(in->d->cfg.channels[j], ch))
            return false;
    return true;
}

/* Bring the subscriber connection's job channels to what in->jobs_paused
 * asks. They are joined again only once every UNSUBSCRIBE was confirmed:
 * hiredis 0.14.1 drops a channel's callback at the confirmation, so a
 * SUBSCRIBE sent before it would lose that channel's messages (the hazard
 * LIBRARIES.md warns of); and since NS:control and the heartbeat channel stay
 * subscribed, the connection never leaves subscribe mode, where its asserts
 * are. Messages Redis sent before confirming reach sub_message() as usual
 * and are taken. Not during the drain's own unsubscribing, and not without a
 * connection: sub_up() applies the state to a new one. */
static void apply_job_channels(struct intake *in)
{
    struct daemon *d = in->d;
    redisAsyncContext *ac = redis_context(d->redis, REDIS_SUB);
    if (in->unsubscribing || !ac || !redis_ready(d->redis, REDIS_SUB))
        return;
    if (in->jobs_paused && in->job_subs == JOBS_ON) {
        in->job_unsubs_left = 0;
        for (int i = 0; i < d->cfg.nchannels; i++)
            if (job_channel(in, i) && unsubscribe(in, ac, d->cfg.channels[i]))
                in->job_unsubs_left++;
        in->job_subs = in->job_unsubs_left ? JOBS_LEAVING : JOBS_OFF;
    } else if (!in->jobs_paused && in->job_subs == JOBS_OFF) {
        in->subscribed_at = mono_ms();  /* ping_cb() times their confirmations */
        for (int i = 0; i < d->cfg.nchannels; i++)
            if (job_channel(in, i))
                subscribe(in, ac, d->cfg.channels[i]);
        in->job_subs = JOBS_ON;
    }
}

/* A job that should have been parked is held here because Redis refused the
 * XADD (out of memory, say) or could not be sent it: refusing the message
 * would lose it, but holding every one grows without bound. So, while
 * parking fails and the held bytes are at limits.max_held_bytes, jobd leaves
 * its job channels: a producer's PUBLISH then returns 0 (PROTOCOL §1), and it
 * knows nobody took the job. They are joined again once the held bytes are
 * under the budget or a park succeeds. WHY: the refusal, for the log. */
static void check_job_channels(struct intake *in, const char *why)
{
    struct daemon *d = in->d;
    bool pause = in->park_failing && bytes_spent(d);
    if (pause != in->jobs_paused) {
        in->jobs_paused = pause;
        if (pause)
            log_warn("pub/sub job channels paused: parking a job on the stream failed (%s) "
                     "and %" PRId64 " bytes are held, limits.max_held_bytes %" PRId64 "; "
                     "PUBLISH to them counts no receiver here until the held bytes are "
                     "under the budget or parking works again",
                     why ? why : "refused", runner_held_bytes(d->runner), d->cfg.max_held_bytes);
        else
            log_info("pub/sub job channels resumed: %s, %" PRId64 " bytes held, "
                     "limits.max_held_bytes %" PRId64,
                     in->park_failing ? "under the budget" : "parking works again",
                     runner_held_bytes(d->runner), d->cfg.max_held_bytes);
    }
    /* Under the budget, a refusal is forgotten: the next message is taken,
     * or parked (slots full), and that park says anew whether Redis takes
     * them. Kept, it paused the channels much later, with no park tried
     * since, once stream reads reached the budget and a job ended. */
    if (!bytes_spent(d))
        in->park_failing = false;
    apply_job_channels(in);
}

static void overflow_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct parked *p = priv;
    p->in->parks_unanswered--;
    if (reply && reply->type == REDIS_REPLY_ERROR && redis_key_error(reply->str) &&
        !event_base_got_exit(p->in->d->base)) {
        /* That stream's key refuses jobs (WRONGTYPE, NOPERM on the key): it
         * is left out from now on, and the job is parked on the next
         * readable stream, still durable. Held in memory instead, it was
         * lost to a crash while it waited for a slot. */
        char refused[sizeof(p->stream)];
        snprintf(refused, sizeof(refused), "%s", p->stream);
        log_info("parking a pub/sub job on %s failed: %s; trying the next stream", refused,
                 reply->str);
        intake_write_refused(p->in, refused, reply->str);
        snprintf(p->stream, sizeof(p->stream), "%s", intake_home_stream(p->in, NULL));
        if (strcmp(p->stream, refused) != 0 && send_park(p->in, p))
            return;
        snprintf(p->stream, sizeof(p->stream), "%s", refused);
    }
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        /* Not stored (or not known to be): the job was taken (its PUBLISH
         * counted this daemon), so it must not vanish. The runner holds it:
         * it runs, or, while draining, goes back on the stream once the
         * command connection is back (at worst it is then parked twice). */
        struct daemon *d = p->in->d;
        if (event_base_got_exit(d->base)) {
            /* The loop is over (given up on Redis): nothing can run or
             * store it any more. Said, as give_up_cb says it of the rest. */
            log_error("pub/sub job lost at exit (parking it on the stream was not confirmed): "
                      "%.*s", (int)(p->len > 1024 ? 1024 : p->len), p->raw);
        } else {
            log_error("parking a pub/sub job on the stream failed: %s; holding it here",
                      reply ? reply->str : "connection lost");
            if (reply)  /* its put-back then goes to another stream */
                intake_write_refused(p->in, p->stream, reply->str);
            struct job_message msg = {.raw = p->raw, .raw_len = p->len, .source = SOURCE_PUBSUB};
            runner_accept(d->runner, &msg);
            p->in->park_failing = true;
            check_job_channels(p->in, reply ? reply->str : "connection lost");
        }
    } else if (p->in->park_failing) {
        p->in->park_failing = false;    /* stored: Redis takes parks again */
        check_job_channels(p->in, NULL);
    }
    free(p);
}

/* Full (slots or bytes) or draining: park the job on the first (readable)
 * stream, durable, instead of holding it in memory or dropping it. */
static bool park_on_stream(struct intake *in, const char *raw, size_t len)
{
    struct parked *p = malloc(sizeof(*p) + len);
    if (!p)
        return false;
    p->in = in;
    p->len = len;
    memcpy(p->raw, raw, len);
    snprintf(p->stream, sizeof(p->stream), "%s", intake_home_stream(in, NULL));
    snprintf(p->queued_at, sizeof(p->queued_at), "%" PRId64, now_ms());
    if (!send_park(in, p)) {
        free(p);
        return false;
    }
    in->overflowed++;
    return true;
}

/* XADD P's job to P->stream; overflow_reply() gets the answer. */
static bool send_park(struct intake *in, struct parked *p)
{
    const char *argv[] = {"XADD", p->stream, "*", "job", p->raw, "queued_at", p->queued_at};
    size_t lens[] = {4, strlen(p->stream), 1, 3, p->len, 9, strlen(p->queued_at)};
    if (redis_send(in->d->redis, REDIS_CMD, overflow_reply, p, 0, 7, argv, lens))
        return false;
    in->parks_unanswered++;
    return true;
}

static void job_message(struct intake *in, const char *payload, size_t len)
{
    struct daemon *d = in->d;
    /* Slots promised to a blocked XREADGROUP count as taken: its entries may
     * arrive at any moment and must find room. */
    bool full = runner_inflight(d->runner) + in->reserved >= d->cfg.max_inflight;
    /* Bytes: what is held, not what the read may bring (it always asks for
     * about what is left of the budget, so counting it would park every
     * message). Nothing held: always taken, however big. */
    full = full || bytes_spent(d);
    note_size(in, len);
    bool park = full || d->draining;
    if (park && park_on_stream(in, payload, len))
        return;
    /* Not parked (the command connection is down): held here. While
     * draining, the runner puts it back on the stream once the connection
     * is back, like every other job it holds (or says it is lost when Redis
     * never comes back). */
    struct job_message msg = {.raw = payload, .raw_len = len, .source = SOURCE_PUBSUB};
    runner_accept(d->runner, &msg);
    if (park) {
        in->park_failing = true;
        check_job_channels(in, "the command connection is down");
    }
}

static void sub_message(redisAsyncContext *ac, void *r, void *privdata)
{
    struct intake *in = privdata;
    redisReply *reply = r;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
        return;
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type != REDIS_REPLY_STRING &&
            reply->element[i]->type != REDIS_REPLY_INTEGER)
            return;
    const char *kind = reply->element[0]->str;
    if (!strcmp(kind, "subscribe") || !strcmp(kind, "psubscribe")) {
        /* Every subscription confirmed: cancels published while NS:control
         * was not heard were kept in NS:cancels by another daemon, or by
         * jobctl. Read after the SUBSCRIBE, not at connect: a cancel written
         * in between would be in neither. A stream connection whose own
         * read waited for this does it now, for both. */
        if (++in->subs_confirmed == in->subs_expected) {
            if (in->stream_awaits_subs)
                stream_read_cancels(in, true);
            else
                cancels_load(in->d->cancels, REDIS_CMD, NULL, NULL);
        }
        maybe_announce(in);
        return;
    }
    if (!strcmp(kind, "unsubscribe") || !strcmp(kind, "punsubscribe")) {
        /* [kind, channel, subscriptions left]: at 0 every message published
         * to us before the UNSUBSCRIBEs has been read. */
        if (reply->element[2]->type == REDIS_REPLY_INTEGER && reply->element[2]->integer == 0)
            in->unsubscribed = true;
        else if (!in->unsubscribing && in->job_subs == JOBS_LEAVING && --in->job_unsubs_left == 0) {
            /* A pause's last confirmation: every message Redis sent before it
             * was taken, and the channels may be joined again. */
            in->job_subs = JOBS_OFF;
            check_job_channels(in, NULL);
        }
        return;
    }
    const redisReply *channel, *payload;
    if (!strcmp(kind, "message")) {
        channel = reply->element[1];
        payload = reply->element[2];
    } else if (!strcmp(kind, "pmessage") && reply->elements == 4) {
        channel = reply->element[2];
        payload = reply->element[3];
    } else {
        return;
    }
    /* jobd's own channels come by their exact subscriptions; a pattern in
     * intake.channels that also matches them ("jobd:*") must not deliver a
     * control message twice, nor turn a result record on NS:events, or
     * another daemon's heartbeat, into a job (whose rejection would be
     * published and read back, for ever). */
    bool exact = !strcmp(kind, "message");
    if (!strcmp(channel->str, in->heartbeat_channel)) {
        if (exact)
            in->ping_sent_at = 0;
    } else if (!strcmp(channel->str, in->control_channel)) {
        if (exact)
            runner_control(in->d->runner, payload->str, payload->len);
    } else if (!strcmp(channel->str, in->events_channel) ||
               !strncmp(channel->str, in->heartbeat_prefix, strlen(in->heartbeat_prefix))) {
        return;
    } else {
        job_message(in, payload->str, payload->len);
    }
}

static void subscribe(struct intake *in, redisAsyncContext *ac, const char *channel)
{
    const char *argv[] = {config_is_pattern(channel) ? "PSUBSCRIBE" : "SUBSCRIBE", channel};
    if (redisAsyncCommandArgv(ac, sub_message, in, 2, argv, NULL) == REDIS_OK)
        in->subs_expected++;
}

static void sub_up(void *arg)
{
    struct intake *in = arg;
    redisAsyncContext *ac = redis_context(in->d->redis, REDIS_SUB);
    if (!ac)
        return;
    if (in->unsubscribing) {
        in->unsubscribed = true;    /* a new connection holds nothing of ours */
        return;
    }
    in->subs_expected = in->subs_confirmed = 0;
    in->ping_sent_at = 0;
    in->subscribed_at = mono_ms();
    /* While paused (check_job_channels()), a new connection joins only
     * NS:control and the heartbeat channel. */
    in->job_subs = in->jobs_paused ? JOBS_OFF : JOBS_ON;
    in->job_unsubs_left = 0;
    for (int i = 0; i < in->d->cfg.nchannels && !in->jobs_paused; i++)
        subscribe(in, ac, in->d->cfg.channels[i]);
    subscribe(in, ac, in->control_channel);
    subscribe(in, ac, in->heartbeat_channel);
}

static void sub_down(void *arg)
{
    struct intake *in = arg;
    if (in->unsubscribing)
        in->unsubscribed = true;    /* what it still held is gone with it */
    in->subs_confirmed = 0;
    in->announced = false;
    /* No confirmation coming: the stream reads for itself; this connection
     * reads again once its subscriptions are confirmed. */
    if (in->stream_awaits_subs)
        stream_read_cancels(in, false);
}

/* The subscriber cannot PING in 0.14.1: publish to our private channel from
 * the command connection and expect to hear it. */
static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct intake *in = arg;
    struct redis *r = in->d->redis;
    int64_t now = mono_ms();
    if (in->unsubscribing)
        return;     /* the heartbeat channel too is no longer heard */
    /* Subscriptions never confirmed: a stalled link (no command deadline
     * covers SUBSCRIBE, and the heartbeat below waits for them). */
    if (redis_ready(r, REDIS_SUB) && in->subs_confirmed < in->subs_expected &&
        now - in->subscribed_at > HEARTBEAT_LIMIT_MS) {
        redis_reset(r, REDIS_SUB, "subscriptions not confirmed");
        return;
    }
    if (!redis_ready(r, REDIS_SUB) || !redis_ready(r, REDIS_CMD) ||
        in->subs_confirmed < in->subs_expected)
        return;
    if (in->ping_sent_at && now - in->ping_sent_at > HEARTBEAT_LIMIT_MS) {
        in->ping_sent_at = 0;
        redis_reset(r, REDIS_SUB, "subscriber did not hear its heartbeat");
        return;
    }
    if (!in->ping_sent_at) {
        const char *argv[] = {"PUBLISH", in->heartbeat_channel, "ping"};
        if (redis_send(r, REDIS_CMD, NULL, NULL, 0, 3, argv, NULL) == 0)
            in->ping_sent_at = now;
    }
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
    in->ping_timer = timer_new_periodic(d->base, HEARTBEAT_EVERY_MS, ping_cb, in);
    in->unreadable_timer = evtimer_new(d->base, recheck_unreadable, in);
    in->subs_wait = evtimer_new(d->base, subs_wait_over, in);
    in->streams = calloc((size_t)d->cfg.nstreams, sizeof(*in->streams));
    if (!in->retry_timer || !in->linger || !in->ping_timer || !in->unreadable_timer ||
        !in->subs_wait || !in->streams) {
        intake_free(in);
        return NULL;
    }
    for (int s = 0; s < d->cfg.nstreams; s++)
        in->streams[s] = (struct stream){.in = in, .readable = true};
    struct redis_hooks sub = {sub_up, sub_down, in}, stream = {stream_up, stream_down, in};
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
    free(in);
}

void intake_capacity_changed(struct intake *in)
{
    if (!in)
        return;
    read_streams(in);
    check_job_channels(in, NULL);   /* held bytes went down, or the budget up */
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

static bool unsubscribe(struct intake *in, redisAsyncContext *ac, const char *channel)
{
    /* hiredis 0.14.1 takes no callback for (P)UNSUBSCRIBE: the confirmation
     * goes to the channel's own, sub_message(). */
    const char *argv[] = {config_is_pattern(channel) ? "PUNSUBSCRIBE" : "UNSUBSCRIBE", channel};
    return redisAsyncCommandArgv(ac, NULL, NULL, 2, argv, NULL) == REDIS_OK;
}

bool intake_unsubscribed(struct intake *in)
{
    if (in->unsubscribed)
        return true;
    redisAsyncContext *ac = redis_context(in->d->redis, REDIS_SUB);
    if (!in->unsubscribing) {
        in->unsubscribing = true;
        in->unsubscribe_sent_at = mono_ms();
        /* Sent SUBSCRIBEs count even unconfirmed: Redis may already be
         * delivering to them (hiredis accepts the UNSUBSCRIBE once they are
         * sent, and the replies come in order). */
        if (!ac || !redis_ready(in->d->redis, REDIS_SUB) || !in->subs_expected) {
            in->unsubscribed = true;
            return true;
        }
        for (int i = 0; i < in->d->cfg.nchannels; i++)
            unsubscribe(in, ac, in->d->cfg.channels[i]);
        unsubscribe(in, ac, in->control_channel);
        unsubscribe(in, ac, in->heartbeat_channel);
        return false;
    }
    if (mono_ms() - in->unsubscribe_sent_at > UNSUBSCRIBE_WAIT_MS) {
        log_warn("shutdown: the subscriber connection did not confirm its UNSUBSCRIBE in %d ms; "
                 "a pub/sub job still on its way to it is lost",
                 UNSUBSCRIBE_WAIT_MS);
        in->unsubscribed = true;
    }
    return in->unsubscribed;
}

int intake_parks_unanswered(const struct intake *in)
{
    return in->parks_unanswered;
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

uint64_t intake_overflowed(const struct intake *in)
{
    return in->overflowed;
}

bool intake_job_channels_paused(const struct intake *in)
{
    return in->jobs_paused;
}

/* For main.c: the command connection came up (announce may now be due). */
void intake_cmd_ready(struct intake *in)
{
    maybe_announce(in);
}
