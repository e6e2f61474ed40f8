/* envelope.c - PROTOCOL §2: the fields every job has, validated one by one.
 *
 * A producer controls every byte here, so each field is checked for type and
 * range before use, and each message names the field and what was wrong.
 * The type's own parse() reads its fields from the same object (job->spec)
 * and refuses whatever neither it nor this file knows.
 */
#include <fnmatch.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "executor.h"

#define MAX_TIMEOUT_MS (7LL * 24 * 3600 * 1000)
#define MAX_DELAY_MS (365LL * 24 * 3600 * 1000)
#define MAX_RESULT_TTL (365LL * 24 * 3600)
#define MAX_REPLY_TO 256

static const char *const common_fields[] = {
    "type", "id", "timeout_ms", "retry", "reply_to", "result_ttl", "run_at", "delay_ms", NULL,
};

bool envelope_valid_id(const char *id, size_t len)
{
    if (len < 1 || len > 128)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* An integer field in [min, max]; absent leaves *out alone. */
static int get_int(const json_t *obj, const char *name, const char *label, long long min,
                   long long max, int64_t *out, struct job_error *err)
{
    json_t *v = json_object_get(obj, name);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        job_error_set(err, ERR_INVALID_JOB, "%s: must be an integer %lld..%lld", label, min, max);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int parse_retry(const json_t *env, struct retry_policy *p, struct job_error *err)
{
    json_t *r = json_object_get(env, "retry");
    if (!r)
        return 0;
    if (!json_is_object(r)) {
        job_error_set(err, ERR_INVALID_JOB, "retry: must be an object");
        return -1;
    }
    static const char *const fields[] = {"attempts", "delay_ms", "backoff", "max_delay_ms",
                                         "jitter", NULL};
    if (object_check_fields(r, "retry", fields, err))
        return -1;
    int64_t v = p->attempts;
    if (get_int(r, "attempts", "retry.attempts", 1, 100, &v, err))
        return -1;
    p->attempts = (int)v;
    if (get_int(r, "delay_ms", "retry.delay_ms", 0, MAX_DELAY_MS, &p->delay_ms, err) ||
        get_int(r, "max_delay_ms", "retry.max_delay_ms", 0, MAX_DELAY_MS, &p->max_delay_ms, err))
        return -1;
    json_t *b = json_object_get(r, "backoff");
    if (b) {
        if (!json_is_number(b) || json_number_value(b) < 1.0 || json_number_value(b) > 100.0) {
            job_error_set(err, ERR_INVALID_JOB, "retry.backoff: must be a number 1.0..100.0");
            return -1;
        }
        p->backoff = json_number_value(b);
    }
    json_t *j = json_object_get(r, "jitter");
    if (j) {
        if (!json_is_boolean(j)) {
            job_error_set(err, ERR_INVALID_JOB, "retry.jitter: must be true or false");
            return -1;
        }
        p->jitter = json_is_true(j);
    }
    return 0;
}

/* reply_to may not point into our own namespace or intake channels: a result
 * published there would be read back as a job (or a control message). */
static int parse_reply_to(struct job *job, const json_t *env, const struct config *cfg,
                          struct job_error *err)
{
    json_t *v = json_object_get(env, "reply_to");
    if (!v)
        return 0;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (!json_is_string(v) || len < 1 || len > MAX_REPLY_TO || strlen(s) != len) {
        job_error_set(err, ERR_INVALID_JOB, "reply_to: must be a channel name of 1..%d bytes",
                      MAX_REPLY_TO);
        return -1;
    }
    size_t nslen = strlen(cfg->ns);
    bool ours = strncmp(s, cfg->ns, nslen) == 0 && s[nslen] == ':';
    for (int i = 0; i < cfg->nchannels && !ours; i++)
        ours = !strcmp(s, cfg->channels[i]) || fnmatch(cfg->channels[i], s, 0) == 0;
    if (ours) {
        job_error_set(err, ERR_INVALID_JOB,
                      "reply_to: \"%.64s\" is one of jobd's own channels (namespace %s)", s,
                      cfg->ns);
        return -1;
    }
    job->reply_to = strdup(s);
    return job->reply_to ? 0 : -1;
}

static int parse_due(struct job *job, const json_t *env, struct job_error *err)
{
    int64_t run_at = -1, delay = -1;
    if (get_int(env, "run_at", "run_at", 0, ENVELOPE_MAX_RUN_AT_MS, &run_at, err) ||
        get_int(env, "delay_ms", "delay_ms", 0, MAX_DELAY_MS, &delay, err))
        return -1;
    if (run_at >= 0 && delay >= 0) {
        job_error_set(err, ERR_INVALID_JOB, "run_at and delay_ms: give one or the other");
        return -1;
    }
    if (run_at >= 0)
        job->due_ms = run_at;
    else if (delay > 0)
        /* queued_at comes from the stream entry (its id or a queued_at field),
         * which a producer can make as large as INT64_MAX: saturate rather
         * than overflow (undefined behaviour; found by fuzz/fuzz_intake.c). */
        job->due_ms = job->queued_at > INT64_MAX - delay ? INT64_MAX : job->queued_at + delay;
    return 0;
}

bool envelope_common_field(const char *key)
{
    for (const char *const *f = common_fields; *f; f++)
        if (!strcmp(*f, key))
            return true;
    return false;
}

void envelope_too_large(size_t len, const struct config *cfg, struct job_error *err)
{
    job_error_set(err, ERR_TOO_LARGE, "envelope is %zu bytes, limits.max_job_bytes is %lld", len,
                  (long long)cfg->max_job_bytes);
}

int envelope_parse(struct job *job, const struct config *cfg, struct job_error *err)
{
    if ((int64_t)job->raw_len > cfg->max_job_bytes) {
        envelope_too_large(job->raw_len, cfg, err);
        return -1;
    }
    json_error_t jerr;
    /* Duplicate keys are refused: two "id"s are a trap, not a job. */
    json_t *env = json_loadb(job->raw, job->raw_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!env) {
        job_error_set(err, ERR_INVALID_JOB, "not JSON: %s (line %d, column %d)", jerr.text,
                      jerr.line, jerr.column);
        return -1;
    }
    job->envelope = env;
    if (!json_is_object(env)) {
        job_error_set(err, ERR_INVALID_JOB, "envelope: must be a JSON object");
        return -1;
    }

    /* The id first, so that whatever else is wrong can be stored under it. */
    json_t *id = json_object_get(env, "id");
    if (id) {
        if (!json_is_string(id) ||
            !envelope_valid_id(json_string_value(id), json_string_length(id))) {
            job_error_set(err, ERR_INVALID_JOB, "id: must be 1-128 characters of [A-Za-z0-9._:-]");
            return -1;
        }
        snprintf(job->id, sizeof(job->id), "%s", json_string_value(id));
    }

    json_t *type = json_object_get(env, "type");
    if (!type) {
        job_error_set(err, ERR_INVALID_JOB, "type: required");
        return -1;
    }
    if (!json_is_string(type)) {
        job_error_set(err, ERR_INVALID_JOB, "type: must be a string");
        return -1;
    }
    job->type = json_string_value(type);
    job->exec = executor_find(job->type);
    if (!job->exec) {
        job_error_set(err, ERR_UNKNOWN_TYPE, "type: unknown type \"%.64s\"", job->type);
        return -1;
    }

    job->timeout_ms = cfg->timeout_ms;
    job->retry = cfg->retry;
    job->result_ttl = cfg->result_ttl;
    if (get_int(env, "timeout_ms", "timeout_ms", 1, MAX_TIMEOUT_MS, &job->timeout_ms, err) ||
        get_int(env, "result_ttl", "result_ttl", 1, MAX_RESULT_TTL, &job->result_ttl, err) ||
        parse_retry(env, &job->retry, err) || parse_reply_to(job, env, cfg, err) ||
        parse_due(job, env, err))
        return -1;

    /* The type reads its own fields from the envelope itself (a copy
     * without the common fields cost a hash table per job). */
    job->spec = json_incref(env);
    return job->exec->parse(job, job->spec, err);
}
