/* cancels.h - the ids cancelled within the last hour, kept in memory and in
 * Redis.
 *
 * PROTOCOL §5: a waiting job never starts once cancelled. A job can wait
 * where no daemon holds it (its stream's backlog, NS:scheduled), so a cancel
 * has to outlive its PUBLISH: the daemon remembers every id it hears for
 * CANCEL_MEMORY_MS, and each job it takes is looked up here first.
 *
 * Memory alone forgot a cancel with the daemon: one started, or whose
 * subscriber reconnected, after the PUBLISH never heard it, and a job still
 * waiting then ran. So a cancel heard is also written to NS:cancels, a sorted
 * set (member: the id; score: when the cancel expires, ms since the epoch),
 * which every daemon reads again whenever its stream or subscriber
 * connection comes up. `jobctl cancel` writes there too, so a cancel reaches
 * jobs that wait while no daemon runs at all.
 *
 * Both hold at most CANCEL_MEMORY_MAX ids; past that within the hour the
 * oldest go (a tenth at a time in memory, logged): a flood of made-up ids
 * must not hold memory without bound, and must not undo every real cancel. */
#ifndef JOBD_CANCELS_H
#define JOBD_CANCELS_H

#include <stdbool.h>
#include <stdint.h>

#include "redis.h"

#define CANCEL_MEMORY_MS (3600 * 1000)
#define CANCEL_MEMORY_MAX 100000

struct daemon;
struct cancels;

struct cancels *cancels_create(struct daemon *d);
void cancels_free(struct cancels *c);

/* Is ID cancelled (a cancel for it heard or read within the hour)? */
bool cancels_has(const struct cancels *c, const char *id);

/* A cancel for ID was heard on NS:control: remember it, and write it to
 * NS:cancels for the daemons that did not hear it. */
void cancels_heard(struct cancels *c, const char *id);

/* Read NS:cancels on connection ROLE. Each id not remembered yet is
 * remembered and handed to runner_apply_cancel(). Sent on the stream
 * connection before its XGROUP CREATEs, the reply comes before any job that
 * connection reads. */
void cancels_load(struct cancels *c, enum redis_role role);

/* How many ids are remembered (for the metrics). */
size_t cancels_count(const struct cancels *c);

#endif
