/* executor.h - the one interface every job type implements.
 *
 * Adding a type means one file and one line in the table in executor.c. The
 * runner owns timeouts, retries, cancel and results for every type alike;
 * executors only do their work and report through job_succeed()/job_fail().
 */
#ifndef JOBD_EXECUTOR_H
#define JOBD_EXECUTOR_H

#include <jansson.h>

#include "job.h"

struct executor {
    const char *type;
    /* Validate the type's own fields (SPEC holds only those; any name the type
     * does not know is an error) and keep what start() needs in
     * job->exec_state. Returns 0, or -1 with ERR filled (invalid_job,
     * forbidden, unavailable...). Runs on the loop; must not block. */
    int (*parse)(struct job *job, const json_t *spec, struct job_error *err);
    /* Begin an attempt on the loop. job_succeed()/job_fail() follows exactly
     * once, possibly from inside start(). May run again for a retry. */
    void (*start)(struct job *job);
    /* Stop promptly; the job_succeed()/job_fail() of the attempt still follows
     * (any status: the runner knows why it stopped the job). */
    void (*cancel)(struct job *job);
    /* Release job->exec_state. NULL when there is nothing to free. */
    void (*free)(struct job *job);
};

const struct executor *executor_find(const char *type);

/* Called once at start-up and at exit for types with global state. */
int executors_init(struct daemon *d);
void executors_shutdown(struct daemon *d);

/* Helpers for parse(): check that SPEC (the envelope: its common fields are
 * known) has no names beyond ALLOWED (NULL-terminated). Returns 0, or -1 with
 * err set to invalid_job naming the first unknown field. */
int spec_check_fields(const json_t *spec, const char *type, const char *const *allowed,
                      struct job_error *err);
/* The same for a nested object (retry, one request of a batch): only ALLOWED. */
int object_check_fields(const json_t *obj, const char *where, const char *const *allowed,
                        struct job_error *err);

extern const struct executor sleep_executor;
extern const struct executor hash_executor;
extern const struct executor file_executor;
extern const struct executor group_executor;
extern const struct executor http_executor;
extern const struct executor sql_executor;

#endif
