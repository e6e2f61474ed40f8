/* intake.h - takes jobs from Redis: pub/sub channels and streams.
 *
 * Pub/sub: SUBSCRIBE / PSUBSCRIBE on the subscriber connection, which also
 * carries NS:control and a private heartbeat channel proving it is alive.
 * A pub/sub job that arrives while the daemon is full or draining is parked
 * on the first stream rather than dropped; while Redis refuses those parks
 * and limits.max_held_bytes is reached, the job channels are left, so that
 * PUBLISH returns 0, and joined again once that clears.
 * Streams: XREADGROUP (group "jobd") on its own connection, asking for no
 * more entries than the free slots below limits.max_inflight, nor than fit
 * (by recent envelope sizes) in what limits.max_held_bytes leaves; reading
 * pauses when either is spent and resumes as jobs finish. The byte budget can
 * be overshot by what one read brings (a pub/sub message admitted below it
 * adds one envelope), and is never applied when nothing is held, so an
 * envelope larger than the budget still runs (limits.max_job_bytes bounds it).
 */
#ifndef JOBD_INTAKE_H
#define JOBD_INTAKE_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>

#include "runner.h"

struct daemon;
struct intake;

struct intake *intake_create(struct daemon *d);
void intake_free(struct intake *in);

/* Read a stream entry reply [id, [field, value, ...]] into MSG, whose
 * strings then point into the reply: the job, and the fields jobd adds when it
 * puts a job back (id, attempts, queued_at, due). -1 when it is not an entry. */
int intake_parse_entry(const redisReply *entry, const char *stream, struct job_message *msg);

/* How many more jobs may be taken now (intake's reads, reclaim's claims):
 * the free slots below limits.max_inflight, and no more envelopes of the
 * recent size than fit in what limits.max_held_bytes leaves (at least one
 * while below it). 0 when either is spent. */
int intake_room(const struct intake *in);

/* A job finished: there may be room to read more. */
void intake_capacity_changed(struct intake *in);

/* Stop taking jobs (shutdown). */
void intake_stop(struct intake *in);

/* True when no stream read is outstanding (a read in flight may still deliver
 * entries that must be handled before exit) and every parked pub/sub job's
 * XADD was answered. */
int intake_idle(const struct intake *in);

/* The end of a drain (nothing runs, nothing is read): unsubscribe from
 * every channel, and say true once Redis confirmed it, the connection is
 * gone, or 5 s passed. A producer's PUBLISH counted this daemon for a message
 * still on its way: read before the confirmation, it is parked on the
 * stream (the exit waits for that too: intake_idle()), not lost with the
 * connection. Called again until it says true. */
bool intake_unsubscribed(struct intake *in);

/* Parked pub/sub jobs whose XADD Redis has not answered yet. */
int intake_parks_unanswered(const struct intake *in);

/* The command connection came up (readiness depends on it too). */
void intake_cmd_ready(struct intake *in);

/* Configured stream S (an index into intake.streams) can be read: its group
 * was made. One that cannot (a key of another type, say) is left out of the
 * reads and asked about again every few seconds. */
bool intake_stream_readable(const struct intake *in, int s);

/* An XADD to STREAM (a park, a put-back) was refused with ERR: one about the
 * key (WRONGTYPE, NOPERM on a key) leaves that stream out of the reads and
 * of put-backs, as if its group could not be made. */
void intake_write_refused(struct intake *in, const char *stream, const char *err);

/* How many configured streams cannot be read now. */
int intake_unreadable_streams(const struct intake *in);

/* The stream a job is put (back) on: STREAM, the one it came from, while it
 * can be read; otherwise, and for a pub/sub job (STREAM NULL), the first
 * configured stream that can be; the first configured one when none can. */
const char *intake_home_stream(const struct intake *in, const char *stream);

/* Counters for the heartbeat. */
uint64_t intake_overflowed(const struct intake *in);

/* The job channels are left (UNSUBSCRIBEd; NS:control stays) because parking
 * a pub/sub job failed with limits.max_held_bytes reached: jobd would
 * otherwise hold every one that arrives. */
bool intake_job_channels_paused(const struct intake *in);

/* Channels (of intake.channels, NS:control, the heartbeat channel) whose
 * SUBSCRIBE Redis refused (an ACL): not heard until a reload finds them
 * allowed (intake_ask_refused()) or jobd restarts. */
int intake_channels_refused(const struct intake *in);

/* A reload: ask Redis whether the refused channels are allowed now (an
 * operator fixed the ACL), and subscribe to those that are. */
void intake_ask_refused(struct intake *in);

#endif
