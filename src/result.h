/* result.h - everything the daemon writes to Redis about a job's outcome.
 *
 * Each outcome is one MULTI/EXEC on the command connection, so the result,
 * its events, counters, dead letter and the stream acknowledgement are stored
 * together or not at all: an entry is never acknowledged without its outcome.
 */
#ifndef JOBD_RESULT_H
#define JOBD_RESULT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "job.h"

struct daemon;

enum job_write {
    WRITE_RESULT = 1,   /* final record: SET, PUBLISH NS:events, HINCRBY, maybe NS:dead, XACK;
                         * reply_to is published once the transaction ran */
    WRITE_SCHEDULE,     /* retry or delay: ZADD NS:scheduled, XACK */
    WRITE_REQUEUE,      /* shutdown: XADD back on the stream, XACK */
};

typedef void result_done_fn(struct job *job, bool stored);

/* Send job->write_kind for JOB. done() follows once (stored = false when the
 * connection failed or Redis refused; the caller keeps the job and tries
 * again). When the connection goes after the write was sent, done() waits
 * until result_redis_ready() has learnt whether it was stored. Returns -1
 * without calling done() when the command connection is not ready. */
int result_write(struct daemon *d, struct job *job, result_done_fn *done);
/* The command connection is back: ask Redis whether the transactions whose
 * EXEC reply was lost with the last one ran, then call their done() (stored =
 * whether they ran) so that only those that did not are written again.
 * Before runner_redis_ready(). */
void result_redis_ready(struct daemon *d);
/* Outcomes in transactions whose reply was lost, not yet checked; and the
 * transactions checked so far, by whether they had been stored. */
void result_lost_counts(int *outcomes, uint64_t *stored, uint64_t *not_stored);
/* Whether Redis refused the PUBLISH on NS:events, or the HINCRBY of
 * NS:stats, as it was queued (an ACL): outcomes are stored without it since. */
void result_refused_parts(bool *events, bool *stats);
/* A reload: the refused parts above are tried again. */
void result_reload(void);
/* Frees the batching state (outcomes are written together once per loop
 * pass); after the loop has stopped, before the event base goes. */
void result_shutdown(void);

/* Rejected messages and jobs that failed for good go to NS:dead whole:
 * whether storing JOB's outcome writes its dead letter (not when the
 * scheduler's mover wrote it already: job->dead_written). */
bool result_goes_to_dead(const struct job *job);

/* The result record of PROTOCOL §4. */
json_t *result_record(const struct daemon *d, const struct job *job);
/* The bytes of JOB's record, without writing it (0 when it cannot be
 * written): a group counts what its children's records will take. */
size_t result_record_size(const struct daemon *d, const struct job *job);

/* The error object {"code", "message", ...}. */
json_t *result_error_json(const struct job_error *err);

/* Key names. */
void result_key(const struct daemon *d, char *buf, size_t len, const char *suffix);

/* NS:result:<id>, whole for the longest namespace (64) and id (128). */
#define RESULT_KEY_SIZE 256
void result_record_key(const struct daemon *d, const char *id, char buf[RESULT_KEY_SIZE]);

#endif
