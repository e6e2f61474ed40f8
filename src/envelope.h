/* envelope.h - PROTOCOL §2: validate an envelope and fill a job from it.
 *
 * Pure parsing: no I/O, no event loop. The type's own fields are handed to
 * its executor's parse(); everything common is handled here, with messages
 * that name the field and the value.
 */
#ifndef JOBD_ENVELOPE_H
#define JOBD_ENVELOPE_H

#include "config.h"
#include "job.h"

/* The latest run_at an envelope may ask for (2100-01-01): later times pass
 * neither Lua's numbers nor the cancel sweep (scheduler.c). */
#define ENVELOPE_MAX_RUN_AT_MS 4102444800000LL

/* Parse job->raw into job->envelope/spec and the job's settings, and run the
 * executor's parse(). On failure returns -1 with err filled; job->id is set
 * whenever the envelope carried a valid id, so the rejection can be stored
 * under it. */
int envelope_parse(struct job *job, const struct config *cfg, struct job_error *err);

/* ERR says an envelope of LEN bytes is over limits.max_job_bytes (too_large). */
void envelope_too_large(size_t len, const struct config *cfg, struct job_error *err);

/* Whether KEY is one of the fields every job has (PROTOCOL §2): the types'
 * own parse() read the envelope itself and skip these. */
bool envelope_common_field(const char *key);

/* 1..128 characters of [A-Za-z0-9._:-]. */
bool envelope_valid_id(const char *id, size_t len);

#endif
