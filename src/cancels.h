/* cancels.h - the ids cancelled within the last jobs.cancel_ttl seconds (an
 * hour by default), kept in memory and in Redis.
 *
 * PROTOCOL §5: a waiting job never starts once cancelled. A job can wait
 * where no daemon holds it (its stream's backlog, NS:scheduled), so a cancel
 * has to outlive its PUBLISH: the daemon remembers every id it hears for
 * jobs.cancel_ttl, and each job it takes is looked up here first. A job can
 * wait in a stream's backlog longer than that (an outage, a slow consumer):
 * the operator who expects such waits raises the setting.
 *
 * Memory alone forgot a cancel with the daemon: one started, or whose
 * subscriber reconnected, after the PUBLISH never heard it, and a job still
 * waiting then ran. So a cancel heard is also written to NS:cancels, a sorted
 * set (member: the id; score: when the cancel expires, ms since the epoch),
 * which every daemon reads again whenever its stream connection comes up
 * and whenever its subscriptions are confirmed (so a cancel written before
 * the SUBSCRIBE is read, and one after it heard); once for both when they
 * come up together (intake.c, stream_up()). `jobctl cancel` writes
 * there too, so a cancel reaches jobs that wait while no daemon runs at all.
 * A job waiting in NS:scheduled longer than that is made due at once by
 * the scheduler's sweep (scheduler.h), so that it ends cancelled in time.
 *
 * Both hold at most CANCEL_MEMORY_MAX ids; past that within the TTL the
 * oldest go (a tenth at a time in memory, logged): a flood of made-up ids
 * must not hold memory without bound, and must not undo every real cancel. */
#ifndef JOBD_CANCELS_H
#define JOBD_CANCELS_H

#include <stdbool.h>
#include <stdint.h>

#include "redis.h"

#define CANCEL_MEMORY_MAX 100000

struct daemon;
struct cancels;

struct cancels *cancels_create(struct daemon *d);
void cancels_free(struct cancels *c);

/* Is ID cancelled (a cancel for it heard or read, not yet expired)? */
bool cancels_has(const struct cancels *c, const char *id);

/* A cancel for ID was heard on NS:control: remember it, and write it to
 * NS:cancels for the daemons that did not hear it. */
void cancels_heard(struct cancels *c, const char *id);

/* Read NS:cancels on connection ROLE. Each id not remembered yet is
 * remembered and handed to runner_apply_cancel(); then DONE(ARG), if given.
 * Sent on the stream connection before its XGROUP CREATEs (from DONE), the
 * reply comes before any job that connection reads. A reply of an error
 * about Redis itself (LOADING) is asked again every 200 ms; a lost reply on
 * the command connection is asked again by cancels_cmd_ready(). A newer
 * read on the same connection makes an older one stale (its DONE never
 * runs). */
typedef void cancels_loaded_fn(void *arg);
void cancels_load(struct cancels *c, enum redis_role role, cancels_loaded_fn *done, void *arg);

/* The command connection came up: write the cancels heard while it was down,
 * and read NS:cancels if a read on it is owed. */
void cancels_cmd_ready(struct cancels *c);

/* How many ids are remembered, expired ones forgotten first (the metrics). */
size_t cancels_count(struct cancels *c);

#endif
