/* executor.c - the table of job types, and helpers their parse() share. */
#include <string.h>

#include "daemon.h"
#include "envelope.h"
#include "exec_http.h"
#include "pgpool.h"
#include "executor.h"

static const struct executor *const executors[] = {
    &sleep_executor,
    &hash_executor,
    &file_executor,
    &group_executor,
    &http_executor,
    &sql_executor,
};

const struct executor *executor_find(const char *type)
{
    for (size_t i = 0; i < sizeof(executors) / sizeof(executors[0]); i++)
        if (!strcmp(executors[i]->type, type))
            return executors[i];
    return NULL;
}

int executors_init(struct daemon *d)
{
    d->pgpool = pgpool_create(d);
    return http_executor_init(d);
}

void executors_shutdown(struct daemon *d)
{
    http_executor_shutdown(d);
    pgpool_free(d->pgpool);
    d->pgpool = NULL;
}

static int check_fields(const json_t *obj, const char *where, const char *const *allowed,
                        bool skip_common, struct job_error *err)
{
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)obj, key, value) {
        bool known = skip_common && envelope_common_field(key);
        for (const char *const *a = allowed; *a && !known; a++)
            known = !strcmp(key, *a);
        if (!known) {
            job_error_set(err, ERR_INVALID_JOB, "%s: unknown field \"%.64s\"", where, key);
            return -1;
        }
    }
    return 0;
}

int spec_check_fields(const json_t *spec, const char *type, const char *const *allowed,
                      struct job_error *err)
{
    return check_fields(spec, type, allowed, true, err);
}

int object_check_fields(const json_t *obj, const char *where, const char *const *allowed,
                        struct job_error *err)
{
    return check_fields(obj, where, allowed, false, err);
}
