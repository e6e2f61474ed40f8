/* scheduler.h - moves due jobs from NS:scheduled back onto their streams.
 *
 * Retries and delayed jobs (run_at, delay_ms) wait in the sorted set
 * NS:scheduled, never only in memory. Every tick one Lua script moves the due
 * ones atomically, so any number of daemons can run the mover at once.
 */
#ifndef JOBD_SCHEDULER_H
#define JOBD_SCHEDULER_H

#include <stdint.h>

struct daemon;
struct scheduler;

struct scheduler *scheduler_create(struct daemon *d);
void scheduler_free(struct scheduler *s);
uint64_t scheduler_moved(const struct scheduler *s);

#endif
