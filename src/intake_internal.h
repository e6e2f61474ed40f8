/* intake_internal.h - what intake.c (room, streams, lifecycle) and
 * intake_pubsub.c (the subscriber connection: parking, pausing the job
 * channels, the heartbeat) share. Not for other modules: intake.h is the
 * API. */
#ifndef JOBD_INTAKE_INTERNAL_H
#define JOBD_INTAKE_INTERNAL_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct daemon;
struct precise_timer;

/* The subscriber's heartbeat (intake_ping_cb()): a ping published every
 * HEARTBEAT_EVERY_MS; the connection is reset when one goes unheard, or its
 * subscriptions unconfirmed, for HEARTBEAT_LIMIT_MS. */
#define HEARTBEAT_EVERY_MS 2000
#define HEARTBEAT_LIMIT_MS 6000

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
    /* Per subscription ("slot"): intake.channels in order, then NS:control,
     * then the heartbeat channel. hiredis 0.14.1 drops the subscriber
     * connection at a SUBSCRIBE's error reply (an ACL's NOPERM); the slot
     * whose SUBSCRIBE was the next to confirm is the one refused, and it is
     * left out from then on (intake_pubsub.c, note_refused()). */
    bool *chan_refused;
    int *chan_seq;              /* its SUBSCRIBE's place on this connection; -1: not sent */
    int chans_refused;          /* slots refused */
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
    /* Pub/sub backpressure when parking fails (see check_job_channels(),
     * intake_pubsub.c). */
    bool park_failing;          /* the last park was refused: its job is held here */
    bool park_refused;          /* ...by Redis (an error reply), not lost with a connection */
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


/* intake.c */

/* The jobs held have reached limits.max_held_bytes. */
bool intake_bytes_spent(const struct daemon *d);
/* An envelope of LEN bytes was taken: reads are planned with it. */
void intake_note_size(struct intake *in, size_t len);
/* Say the daemon ready once streams, subscriptions and commands all are. */
void intake_maybe_announce(struct intake *in);
/* The stream connection's read of NS:cancels (see there). */
void intake_stream_read_cancels(struct intake *in, bool for_subs);

/* intake_pubsub.c */

/* The subscriber connection's hooks (struct redis_hooks). */
void intake_sub_up(void *arg);
void intake_sub_down(void *arg);
/* Every HEARTBEAT_EVERY_MS: is the subscriber connection still heard? */
void intake_ping_cb(evutil_socket_t fd, short what, void *arg);
/* A job finished (held bytes went down) or the budget went up: the job
 * channels may be joined again. */
void intake_pubsub_capacity_changed(struct intake *in);
/* Subscription slots: intake.channels, NS:control, the heartbeat channel. */
int intake_chan_slots(const struct intake *in);

#endif
