/* scheduler.h - moves due jobs from NS:scheduled back onto their streams.
 *
 * Retries and delayed jobs (run_at, delay_ms) wait in the sorted set
 * NS:scheduled, never only in memory. Every tick one Lua script moves the due
 * ones atomically, so any number of daemons can run the mover at once.
 *
 * A cancel is remembered for jobs.cancel_ttl (cancels.h), and a job can wait in
 * NS:scheduled far longer (run_at, delay_ms, a retry's wait); checked only
 * when it came due, it would run. So after cancels are heard or read, a
 * pass over the set (ZSCAN in a Lua script, a page a call) makes every
 * member whose id is in NS:cancels due now, with its own time kept in the
 * member as "early_due". The mover puts it on its stream within a tick with
 * that field, and the daemon that reads it ends it cancelled; one that no
 * longer knows the cancel (the memory was flooded past its limit meanwhile)
 * schedules it again for that time instead of running it early.
 */
#ifndef JOBD_SCHEDULER_H
#define JOBD_SCHEDULER_H

#include <stdint.h>

struct daemon;
struct scheduler;

struct scheduler *scheduler_create(struct daemon *d);
void scheduler_free(struct scheduler *s);
uint64_t scheduler_moved(const struct scheduler *s);

/* A cancel was heard or read: sweep NS:scheduled for its job soon (a burst
 * of cancels makes one pass). */
void scheduler_sweep_cancelled(struct scheduler *s);
/* Jobs the sweeps made due early, for the metrics. */
uint64_t scheduler_pulled(const struct scheduler *s);

#endif
