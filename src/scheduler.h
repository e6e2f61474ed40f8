/* scheduler.h - moves due jobs from NS:scheduled back onto their streams.
 *
 * Retries and delayed jobs (run_at, delay_ms) wait in the sorted set
 * NS:scheduled, never only in memory. Every tick one Lua script moves the due
 * ones atomically, so any number of daemons can run the mover at once.
 *
 * A cancel is remembered for an hour (cancels.h), and a job can wait in
 * NS:scheduled far longer (run_at, delay_ms, a retry's wait); checked only
 * when it came due, it would run. So after cancels are heard or read, one
 * pass over the set, a page a call, makes every member due later than
 * SCHEDULER_PULL_AHEAD_MS whose id is in NS:cancels due now: the mover puts
 * it on its stream within a tick, and the daemon that reads it ends it
 * cancelled while the cancel is remembered. Members due sooner keep their
 * time; the cancel outlives them.
 *
 * Such a job carries its old due time. A daemon that reads one whose cancel
 * it does not know (the memory was flooded past its limit meanwhile)
 * schedules it again for that time instead of running it early: a due time
 * more than SCHEDULER_EARLY_MS ahead marks it, which leaves daemons' clocks
 * that much room to differ.
 */
#ifndef JOBD_SCHEDULER_H
#define JOBD_SCHEDULER_H

#include <stdint.h>

#define SCHEDULER_PULL_AHEAD_MS (5 * 60 * 1000)
#define SCHEDULER_EARLY_MS (SCHEDULER_PULL_AHEAD_MS / 2)

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
