/* reclaim.h - crash recovery for stream jobs (PROTOCOL §1).
 *
 * An entry read by a daemon that died stays pending in the group. Once idle
 * longer than intake.visibility_timeout_ms it is claimed (XPENDING + XCLAIM,
 * which also tells how often it was delivered) and run again; one delivered
 * too often is a poison job and goes to NS:dead instead, and so does a
 * record of one deleted while pending (its text is gone). A daemon keeps the
 * entries of its own long jobs fresh (XCLAIM to itself) so they are not
 * stolen while they run.
 */
#ifndef JOBD_RECLAIM_H
#define JOBD_RECLAIM_H

struct daemon;
struct reclaim;

/* Deliveries after which an entry is declared poison. */
#define RECLAIM_MAX_DELIVERIES 5

struct reclaim *reclaim_create(struct daemon *d);
void reclaim_free(struct reclaim *rc);
/* The command connection came up: refresh every entry held, and claim
 * nothing for a while (live holders are reconnecting too). */
void reclaim_redis_ready(struct reclaim *rc);

#endif
