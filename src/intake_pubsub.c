/* intake_pubsub.c - pub/sub intake (see intake.h): the subscriber
 * connection's subscriptions and messages, parking the jobs that find the
 * daemon full on the stream, leaving and joining the job channels while
 * Redis refuses those parks (check_job_channels()), the heartbeat that
 * proves the connection alive, and the drain's final UNSUBSCRIBE. */
#include <event2/event.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cancels.h"
#include "config.h"
#include "daemon.h"
#include "intake.h"
#include "intake_internal.h"
#include "log.h"
#include "redis.h"
#include "runner.h"
#include "timer.h"

/* How long the exit waits for the subscriber to confirm its UNSUBSCRIBEs. */
#define UNSUBSCRIBE_WAIT_MS 5000

/* A parked job, kept until Redis has said that its XADD was stored. */
struct parked {
    struct intake *in;
    char stream[513];           /* where (intake.streams names are up to 512 bytes) */
    char queued_at[24];         /* when it was first parked (ms) */
    size_t len;
    char raw[];
};

static bool send_park(struct intake *in, struct parked *p);
static void subscribe(struct intake *in, redisAsyncContext *ac, int slot);
static bool unsubscribe(struct intake *in, redisAsyncContext *ac, const char *channel);

int intake_chan_slots(const struct intake *in)
{
    return in->d->cfg.nchannels + 2;
}

#define SLOT_CONTROL(in) ((in)->d->cfg.nchannels)
#define SLOT_HEARTBEAT(in) ((in)->d->cfg.nchannels + 1)

static const char *slot_channel(const struct intake *in, int slot)
{
    if (slot < in->d->cfg.nchannels)
        return in->d->cfg.channels[slot];
    return slot == SLOT_CONTROL(in) ? in->control_channel : in->heartbeat_channel;
}

/* Channel I of intake.channels is one a pause leaves and joins: not jobd's
 * own NS:control (cancels must still be heard) or heartbeat channel, nor a
 * repeat of an earlier item (hiredis 0.14.1 forgets a channel's callback at
 * its first UNSUBSCRIBE confirmation, so a second one would never be
 * counted, and the channels never joined again). */
static bool job_channel(const struct intake *in, int i)
{
    const char *ch = in->d->cfg.channels[i];
    if (in->chan_refused[i] || !strcmp(ch, in->control_channel) ||
        !strcmp(ch, in->heartbeat_channel))
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
 * connection: intake_sub_up() applies the state to a new one. */
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
        in->subscribed_at = mono_ms();  /* intake_ping_cb() times their confirmations */
        for (int i = 0; i < d->cfg.nchannels; i++)
            if (job_channel(in, i))
                subscribe(in, ac, i);
        in->job_subs = JOBS_ON;
    }
}

/* A job that should have been parked is held here because Redis refused the
 * XADD (out of memory, say) or could not be sent it: refusing the message
 * would lose it, but holding every one grows without bound. So, while
 * parking fails and the held bytes are at limits.max_held_bytes, jobd leaves
 * its job channels: a producer's PUBLISH then returns 0 (PROTOCOL §1), and it
 * knows nobody took the job. They are joined again once the held bytes are
 * under the budget or a park succeeds. While draining, a job held is not run
 * but put back on the stream, an XADD Redis refuses as it refused the park
 * (out of memory, an ACL): one more taken is one more that the give-up may
 * lose, and a producer told 0 can retry elsewhere. So there one park Redis
 * refused leaves them, whatever the bytes, and only a park that succeeds
 * (one already sent) joins them again: the held bytes going down (a job
 * ending) says nothing about Redis taking parks. A park lost with the
 * command connection is not such a refusal: the connection comes back, and
 * the held job goes back on the stream then; the budget rule applies.
 * WHY: the refusal, for the log. */
static void check_job_channels(struct intake *in, const char *why)
{
    struct daemon *d = in->d;
    bool for_the_drain = d->draining && in->park_refused;
    bool pause = in->park_failing && (intake_bytes_spent(d) || for_the_drain);
    if (pause != in->jobs_paused) {
        in->jobs_paused = pause;
        if (pause && for_the_drain)
            log_warn("pub/sub job channels paused for the rest of the drain: parking a job on "
                     "the stream failed (%s), and a draining daemon can neither run nor park "
                     "what it hears; PUBLISH to them counts no receiver here (%" PRId64
                     " bytes held)",
                     why ? why : "refused", runner_held_bytes(d->runner));
        else if (pause)
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
     * since, once stream reads reached the budget and a job ended. Not a
     * refusal while draining: no stream read follows, and forgotten, it let
     * the next job's end join the channels with parks still refused. */
    if (!intake_bytes_spent(d) && !for_the_drain)
        in->park_failing = in->park_refused = false;
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
            if (reply)
                p->in->park_refused = true;
            check_job_channels(p->in, reply ? reply->str : "connection lost");
        }
    } else if (p->in->park_failing) {
        /* stored: Redis takes parks again */
        p->in->park_failing = p->in->park_refused = false;
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
    full = full || intake_bytes_spent(d);
    intake_note_size(in, len);
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
                intake_stream_read_cancels(in, true);
            else
                cancels_load(in->d->cancels, REDIS_CMD, NULL, NULL);
        }
        intake_maybe_announce(in);
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

/* Subscribe to SLOT's channel, unless Redis refused it (note_refused()). */
static void subscribe(struct intake *in, redisAsyncContext *ac, int slot)
{
    const char *channel = slot_channel(in, slot);
    if (in->chan_refused[slot])
        return;
    const char *argv[] = {config_is_pattern(channel) ? "PSUBSCRIBE" : "SUBSCRIBE", channel};
    if (redisAsyncCommandArgv(ac, sub_message, in, 2, argv, NULL) == REDIS_OK)
        in->chan_seq[slot] = in->subs_expected++;
}

/* Channel NAME, in every slot that repeats it, refused or allowed again;
 * chans_refused counts names, not slots. */
static void mark_refused(struct intake *in, const char *name, bool refused)
{
    for (int s = 0; s < intake_chan_slots(in); s++)
        if (!strcmp(slot_channel(in, s), name))
            in->chan_refused[s] = refused;
    in->chans_refused += refused ? 1 : -1;
}

/* The subscriber connection was lost for WHY. Redis answers a SUBSCRIBE it
 * refuses (an ACL user without that channel) with a NOPERM error, for
 * which hiredis 0.14.1 has no callback: it drops the connection. Every
 * reconnect sent the same SUBSCRIBE again: a warn line each backoff round,
 * the subscriptions never all confirmed (the daemon never said ready, its
 * worker key never written), and each stream connection's first read held
 * for them. The replies come in order, so the refused channel is the one
 * whose SUBSCRIBE was the next to be confirmed: it is said once, at error
 * level, and left out; the next connection joins the others. It is asked
 * about again at a reload (intake_ask_refused()) or a restart, not by a
 * SUBSCRIBE on a live connection: refused again, that would drop it, and
 * the messages on their way with it. */
static void note_refused(struct intake *in, const char *why)
{
    if (in->unsubscribing || strncmp(why, "NOPERM", 6) != 0 ||
        in->subs_confirmed >= in->subs_expected)
        return;
    int slot = -1;
    for (int s = 0; s < intake_chan_slots(in); s++)
        if (in->chan_seq[s] == in->subs_confirmed)
            slot = s;
    if (slot < 0)
        return;
    const char *name = slot_channel(in, slot);
    mark_refused(in, name, true);
    log_error("redis refused to subscribe to %s: %s; %s; it is left out of the subscriptions "
              "until a reload (SIGHUP) finds it allowed, or jobd restarts "
              "(jobd_channels_refused)",
              name, why,
              slot == SLOT_HEARTBEAT(in)
                  ? "the subscriber connection's heartbeat is off (a silent link is not noticed)"
              : slot == SLOT_CONTROL(in)
                  ? "cancels published there are not heard (those kept in NS:cancels are read "
                    "when a connection comes up)"
                  : "jobs published there are not heard here (PUBLISH counts no receiver "
                    "for this daemon)");
}

/* ---- refused channels, asked about again at a reload ------------------- */

/* A refused channel is not asked for with a SUBSCRIBE on the live
 * subscriber connection: refused again, hiredis 0.14.1 drops that
 * connection (LIBRARIES.md §2), and with it the messages Redis already sent
 * it on the other channels (their PUBLISH counted this daemon), and each
 * reload would do it again. Nor on the command connection: hiredis would
 * take it for a subscriber from then on. The command connection asks Redis
 * instead whether this user may SUBSCRIBE to it (redis.acl_check_cmd, Redis
 * 7.0, the same ACL check as the SUBSCRIBE's, patterns included, and no side
 * effect); the SUBSCRIBE is sent only once allowed. The connections share
 * one user (redis.username). */
static const char acl_check_script[] =
    "return redis.acl_check_cmd(ARGV[1], ARGV[2]) and 1 or 0";

struct ask {
    struct intake *in;
    int slot;
};

/* Subscribe to SLOT's channel (and its repeats), which Redis now allows, on
 * the live subscriber connection as intake_sub_up() would have: job
 * channels only while joined (a pause's end joins them, job_channel()). Not
 * connected: the next connection's intake_sub_up() does it. Its
 * confirmation reads NS:cancels again (sub_message()), as NS:control's
 * needs: cancels published while it was refused. */
static void subscribe_allowed(struct intake *in, const char *name)
{
    struct daemon *d = in->d;
    redisAsyncContext *ac = redis_context(d->redis, REDIS_SUB);
    if (!ac || !redis_ready(d->redis, REDIS_SUB))
        return;
    if (in->subs_confirmed >= in->subs_expected)
        in->subscribed_at = mono_ms();  /* intake_ping_cb() times the confirmation */
    for (int s = 0; s < intake_chan_slots(in); s++)
        if (!strcmp(slot_channel(in, s), name) &&
            (s >= d->cfg.nchannels || (in->job_subs == JOBS_ON && !in->jobs_paused)))
            subscribe(in, ac, s);
}

static void not_asked(const char *name, const char *why)
{
    log_warn("reload: could not ask redis whether jobd may now subscribe to %s: %s; it stays "
             "left out (jobd_channels_refused) until a reload can ask, or jobd restarts",
             name, why);
}

static void ask_reply(struct redis *r, redisReply *reply, void *priv)
{
    struct ask *a = priv;
    struct intake *in = a->in;
    int slot = a->slot;
    free(a);
    if (in->unsubscribing || event_base_got_exit(in->d->base))
        return;     /* draining's end: nothing is subscribed any more */
    const char *name = slot_channel(in, slot);
    if (!in->chan_refused[slot])
        return;     /* allowed by an earlier reload's answer */
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        /* An ACL without EVAL, a Redis older than 7.0 (no acl_check_cmd) */
        not_asked(name, !reply ? "the command connection was lost"
                        : reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        return;
    }
    if (!reply->integer) {
        log_error("reload: redis still refuses to subscribe to %s (the ACL user lacks it); it "
                  "stays left out of the subscriptions until a reload finds it allowed, or jobd "
                  "restarts (jobd_channels_refused)",
                  name);
        return;
    }
    mark_refused(in, name, false);
    log_notice("reload: redis now lets jobd subscribe to %s: subscribing", name);
    subscribe_allowed(in, name);
}

void intake_ask_refused(struct intake *in)
{
    if (!in->chans_refused || in->unsubscribing)
        return;
    for (int slot = 0; slot < intake_chan_slots(in); slot++) {
        const char *name = slot_channel(in, slot);
        bool first = in->chan_refused[slot];
        for (int s = 0; s < slot && first; s++)
            first = strcmp(slot_channel(in, s), name) != 0;
        if (!first)
            continue;
        const char *argv[] = {"EVAL", acl_check_script, "0",
                              config_is_pattern(name) ? "psubscribe" : "subscribe", name};
        struct ask *a = malloc(sizeof(*a));
        const char *why = "out of memory";
        if (a) {
            *a = (struct ask){.in = in, .slot = slot};
            if (redis_send(in->d->redis, REDIS_CMD, ask_reply, a, 0, 5, argv, NULL) == 0)
                continue;
            free(a);
            why = "the command connection is down";
        }
        not_asked(name, why);
    }
}

void intake_sub_up(void *arg)
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
    for (int s = 0; s < intake_chan_slots(in); s++)
        in->chan_seq[s] = -1;
    for (int i = 0; i < in->d->cfg.nchannels && !in->jobs_paused; i++)
        subscribe(in, ac, i);
    subscribe(in, ac, SLOT_CONTROL(in));
    subscribe(in, ac, SLOT_HEARTBEAT(in));
}

void intake_sub_down(void *arg)
{
    struct intake *in = arg;
    note_refused(in, redis_down_reason(in->d->redis, REDIS_SUB));
    if (in->unsubscribing)
        in->unsubscribed = true;    /* what it still held is gone with it */
    in->subs_confirmed = 0;
    in->announced = false;
    /* No confirmation coming: the stream reads for itself; this connection
     * reads again once its subscriptions are confirmed. */
    if (in->stream_awaits_subs)
        intake_stream_read_cancels(in, false);
}

/* The subscriber cannot PING in 0.14.1: publish to our private channel from
 * the command connection and expect to hear it. */
void intake_ping_cb(evutil_socket_t fd, short what, void *arg)
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
        in->subs_confirmed < in->subs_expected || in->chan_refused[SLOT_HEARTBEAT(in)])
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
        /* Not a refused one: never subscribed, its confirmation would reach
         * no callback (the last, with 0 left, included). */
        for (int s = 0; s < intake_chan_slots(in); s++)
            if (!in->chan_refused[s])
                unsubscribe(in, ac, slot_channel(in, s));
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

uint64_t intake_overflowed(const struct intake *in)
{
    return in->overflowed;
}

bool intake_job_channels_paused(const struct intake *in)
{
    return in->jobs_paused;
}

int intake_channels_refused(const struct intake *in)
{
    return in ? in->chans_refused : 0;
}

void intake_pubsub_capacity_changed(struct intake *in)
{
    /* Every job's end comes here: with the channels joined and no park
     * refused, check_job_channels() has nothing to change (a pause's own
     * last UNSUBSCRIBE confirmation joins them again, in sub_message()). */
    if (!in->jobs_paused && !in->park_failing)
        return;
    check_job_channels(in, NULL);   /* held bytes went down, or the budget up */
}
