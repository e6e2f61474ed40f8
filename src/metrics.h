/* metrics.h - counters and histograms behind the admin /metrics page.
 *
 * Updated on the loop thread only (no locks): the runner records each final
 * outcome, the other modules are read when the page is rendered.
 */
#ifndef JOBD_METRICS_H
#define JOBD_METRICS_H

#include <stdint.h>

struct daemon;
struct evbuffer;

/* A job reached its final status; DURATION_MS from its first start to its end. */
void metrics_job_finished(const char *type, const char *status, int64_t duration_ms);
void metrics_retry_scheduled(void);
void metrics_dead_letter(void);

/* Stream lag and pending counts, refreshed from XINFO GROUPS. */
void metrics_set_stream(const char *stream, int64_t lag, int64_t pending);

/* Append the Prometheus text exposition (version 0.0.4) of everything. */
void metrics_render(const struct daemon *d, struct evbuffer *out);

#endif
