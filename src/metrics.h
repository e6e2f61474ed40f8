/* metrics.h - counters and histograms behind the admin /metrics page.
 *
 * Updated on the loop thread only (no locks): the runner records each final
 * outcome, the other modules are read when the page is rendered.
 */
#ifndef JOBD_METRICS_H
#define JOBD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct daemon;
struct evbuffer;

struct job;

/* A job's final outcome was stored: count it by type and status, time it
 * from its last start, and count its dead letter. */
void metrics_job_finished(const struct job *job);

/* N dead letters written outside a job's outcome (the NS:scheduled mover's). */
void metrics_dead_letters(uint64_t n);

/* The duration observed for a job that ran from STARTED_AT to FINISHED_AT
 * (wall-clock ms, as result records give them), in seconds; never below 0. */
double metrics_job_seconds(int64_t started_at, int64_t finished_at);

/* Stream lag and pending counts, refreshed from XINFO GROUPS; LAG -1: unknown. */
void metrics_set_stream(const char *stream, int64_t lag, int64_t pending);

/* STREAM's lag and pending could not be read (XINFO GROUPS failed, or no
 * group jobd there): no series for it until metrics_set_stream() again, so
 * the last values do not pass for current ones. Returns whether it had them,
 * or had never been read: whether the failure is news to say. */
bool metrics_forget_stream(const char *stream);

/* Append the Prometheus text exposition (version 0.0.4) of everything. */
void metrics_render(const struct daemon *d, struct evbuffer *out);

#endif
